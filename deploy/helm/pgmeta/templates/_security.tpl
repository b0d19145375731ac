{{/* The orchestrator's access settings (docs/security.md), as container env entries. */}}
{{- define "pgmeta.authEnv" -}}
- name: PGMETA_ADHOC_ALLOWED_HOSTS
  value: {{ .Values.auth.adhocAllowedHosts | toJson | quote }}
{{- with .Values.auth.bootstrapTokenSecret.name }}
- name: PGMETA_BOOTSTRAP_TOKEN_SHA256
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $.Values.auth.bootstrapTokenSecret.key }}, optional: true}
{{- end }}
{{- with .Values.auth.oidc.issuer }}
- name: PGMETA_OIDC_ISSUER
  value: {{ . | quote }}
- name: PGMETA_OIDC_AUDIENCE
  value: {{ $.Values.auth.oidc.audience | quote }}
- name: PGMETA_OIDC_ROLE_CLAIM
  value: {{ $.Values.auth.oidc.roleClaim | quote }}
{{- with $.Values.auth.oidc.jwksUrl }}
- name: PGMETA_OIDC_JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.auth.sslrootcertDir }}
- name: PGMETA_SSLROOTCERT_DIR
  value: {{ . | quote }}
{{- end }}
{{- end -}}
