{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.operatorName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/* Labels that select the operator pod (stable across upgrades: a Deployment's selector is immutable). */}}
{{- define "kubetune.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.operatorLabels" -}}
{{ include "kubetune.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.operatorServiceAccountName" -}}
{{- default (include "kubetune.operatorName" .) .Values.serviceAccount.operator.name }}
{{- end }}

{{- define "kubetune.jobServiceAccountName" -}}
{{- default (printf "%s-job" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-") .Values.serviceAccount.job.name }}
{{- end }}

{{/* Namespaces that get the jobs' ServiceAccount: the release's, every watched one, and the extra ones. */}}
{{- define "kubetune.jobNamespaces" -}}
{{- concat (list .Release.Namespace) .Values.operator.watchNamespaces .Values.serviceAccount.job.extraNamespaces | uniq | toJson }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "kubetune.image" -}}
{{- $image := index .root.Values.image .which }}
{{- $ref := printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) }}
{{- if $image.digest }}
{{- $ref = printf "%s@%s" $ref $image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
The operator's API access: exactly kubetune.operator.rbac.RULES, plus PEERING_RULES when kopf peers
(tests/unit/test_chart_rbac.py compares them).
*/}}
{{- define "kubetune.operatorRules" -}}
- apiGroups: [kubetune.dev]
  resources: [finetuneruns]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.dev]
  resources: [finetuneruns/status]
  verbs: [get, list, watch, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, delete, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [create, get, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- if .Values.notify.enabled }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- if not .Values.operator.standalone }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings, clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}
