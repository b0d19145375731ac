{{- /* Telemetry wiring shared by every service's pod (values: telemetry.*): OpenTelemetry variables, the
       Prometheus scrape port of the app, and the sidecar's metrics annotations. See docs/observability.md. */ -}}

{{- define "pgmeta.telemetryEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_EXPORTER_PROMETHEUS_HOST
  value: "0.0.0.0"
- name: OTEL_EXPORTER_PROMETHEUS_PORT
  value: {{ .root.Values.telemetry.metricsPort | quote }}
- name: PGMETA_LOG_FORMAT
  value: {{ .root.Values.telemetry.logFormat | quote }}
{{- with .root.Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.telemetry.samplingRate | quote }}
{{- end }}

{{- define "pgmeta.telemetryPorts" -}}
- name: metrics
  containerPort: {{ .Values.telemetry.metricsPort }}
  protocol: TCP
{{- end }}

{{- define "pgmeta.telemetryAnnotations" -}}
dapr.io/enable-metrics: "true"
dapr.io/metrics-port: {{ .Values.telemetry.daprMetricsPort | quote }}
{{- if .Values.telemetry.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.telemetry.metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
