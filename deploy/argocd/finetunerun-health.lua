-- Argo CD health check for kubetune.dev/FineTuneRun (install: deploy/argocd/argocd-cm.yaml).
-- Argo CD runs it with gopher-lua (Lua 5.1): `obj` is the live object; return {status = …, message = …}.
--   no status yet                            -> Missing      (the operator has not seen the run: is it running?)
--   status.observedGeneration < generation   -> Progressing  (the operator has not acted on the latest spec yet)
--   Failed condition True or phase Failed    -> Degraded
--   Stalled condition True                   -> Degraded     (it cannot go on by itself: store, pods, old Job)
--   phase Succeeded                          -> Healthy
--   phase Suspended                          -> Suspended
--   spec.suspend true, phase not Suspended   -> Progressing  (the running stage is being suspended)
--   phase Pending, Queued or Running         -> Progressing
--   any other phase                          -> Unknown
local hs = {}
local status = obj.status
local generation = obj.metadata and obj.metadata.generation

local function condition(kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function explain(fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  if status.progressText ~= nil and status.progressText ~= "" then
    return status.progressText
  end
  return fallback
end

if status == nil or (status.phase == nil and status.observedGeneration == nil) then
  hs.status = "Missing"
  hs.message = "No status yet: the kubetune operator has not observed this run"
  return hs
end

if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local failed = condition("Failed")
if status.phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  if failed ~= nil and failed.status == "True" and failed.message ~= nil and failed.message ~= "" then
    hs.message = failed.message
  else
    hs.message = explain("The run failed")
  end
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = "Stalled (" .. tostring(stalled.reason) .. "): " .. tostring(stalled.message or "")
  return hs
end

if status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = explain("Every stage has its output")
  return hs
end

if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = explain("Suspended (spec.suspend: true)")
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Progressing"
  hs.message = "Suspending: " .. explain("waiting for the running stage to stop")
  return hs
end

if status.phase == "Pending" or status.phase == "Queued" or status.phase == "Running" then
  hs.status = "Progressing"
  hs.message = explain(status.phase)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(status.phase)
return hs
