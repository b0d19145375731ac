{{/* Names and labels shared by every template. */}}

{{- define "pgmeta.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgmeta.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgmeta.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pgmeta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pgmeta
{{- end -}}

{{- define "pgmeta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgmeta.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* Connection metadata every Redis-backed Dapr component shares. */}}
{{- define "pgmeta.redisMetadata" -}}
- name: redisHost
  value: {{ required "redis.host is required" .Values.redis.host | quote }}
{{- if .Values.redis.passwordSecret.name }}
- name: redisPassword
  secretKeyRef:
    name: {{ .Values.redis.passwordSecret.name }}
    key: {{ .Values.redis.passwordSecret.key }}
{{- end }}
- name: enableTLS
  value: {{ .Values.redis.enableTLS | toString | quote }}
{{- end -}}

{{/* "true" when an autoscaler owns the service's replica count (KEDA or HPA, stages only), else "". */}}
{{- define "pgmeta.autoscaled" -}}
{{- $values := index .root.Values.services .service -}}
{{- if and $values.autoscaling (or .root.Values.autoscaling.keda.enabled .root.Values.autoscaling.hpa.enabled) -}}
true
{{- end -}}
{{- end -}}
