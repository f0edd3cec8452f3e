{{- define "teal.name" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "teal.labels" -}}
app.kubernetes.io/name: teal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "teal.selector" -}}
app.kubernetes.io/name: teal
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "teal.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "teal.name" .) -}}
{{- else -}}
{{- required "redis.url is required when redis.enabled is false" .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "teal.tokenSecret" -}}
{{- if .Values.adminToken.existingSecret -}}
{{- .Values.adminToken.existingSecret -}}
{{- else -}}
{{- printf "%s-admin" (include "teal.name" .) -}}
{{- end -}}
{{- end -}}

{{- define "teal.modelsClaim" -}}
{{- if .Values.models.existingClaim -}}
{{- .Values.models.existingClaim -}}
{{- else -}}
{{- printf "%s-models" (include "teal.name" .) -}}
{{- end -}}
{{- end -}}
