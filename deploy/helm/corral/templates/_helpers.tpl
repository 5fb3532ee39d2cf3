{{/* Names: the release name, with the chart's appended unless it already contains it (63 characters). */}}
{{- define "corral.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "corral.webService" -}}{{ include "corral.fullname" . | trunc 59 | trimSuffix "-" }}-web{{- end -}}
{{- define "corral.workerServiceAccount" -}}{{ include "corral.fullname" . | trunc 56 | trimSuffix "-" }}-worker{{- end -}}

{{/* Selector labels of a component (web, worker, beat, migrate): never change them, selectors are immutable. */}}
{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: corral
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "corral.labels" -}}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "corral.commonLabels" -}}
app.kubernetes.io/name: corral
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "corral.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The in-cluster names of the web Service; the probes send the second-to-last as their Host header. */}}
{{- define "corral.serviceHosts" -}}
{{- $svc := include "corral.webService" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | join "," -}}
{{- end -}}

{{- define "corral.probeHost" -}}{{ include "corral.webService" . }}.{{ .Release.Namespace }}.svc{{- end -}}

{{/* Every secret setting: SETTING -> {name, key}. */}}
{{- define "corral.secretItems" -}}
{{- $items := list -}}
{{- $items = append $items (dict "setting" "SECRET_KEY" "name" .Values.secrets.secretKey.name "key" .Values.secrets.secretKey.key) -}}
{{- $items = append $items (dict "setting" "DATABASE_URL" "name" .Values.secrets.databaseUrl.name "key" .Values.secrets.databaseUrl.key) -}}
{{- $items = append $items (dict "setting" "REDIS_URL" "name" .Values.secrets.redisUrl.name "key" .Values.secrets.redisUrl.key) -}}
{{- $items = append $items (dict "setting" "CELERY_BROKER_URL" "name" .Values.secrets.celeryBrokerUrl.name "key" .Values.secrets.celeryBrokerUrl.key) -}}
{{- if .Values.metrics.tokenSecret.name -}}
{{- $items = append $items (dict "setting" "METRICS_TOKEN" "name" .Values.metrics.tokenSecret.name "key" .Values.metrics.tokenSecret.key) -}}
{{- end -}}
{{- range .Values.secrets.extra -}}
{{- $items = append $items (dict "setting" .setting "name" .name "key" .key) -}}
{{- end -}}
{{- toJson $items -}}
{{- end -}}

{{/* The environment of every Corral container: settings as values, secrets as *_FILE paths. */}}
{{- define "corral.env" -}}
{{- $hosts := concat .Values.allowedHosts (splitList "," (include "corral.serviceHosts" .)) -}}
{{- $origins := .Values.csrfTrustedOrigins -}}
{{- if not $origins -}}
{{- range .Values.allowedHosts -}}{{- $origins = append $origins (printf "https://%s" (trimPrefix "." .)) -}}{{- end -}}
{{- end -}}
- name: CORRAL_ENV
  value: production
- name: ALLOWED_HOSTS
  value: {{ join "," $hosts | quote }}
- name: CSRF_TRUSTED_ORIGINS
  value: {{ join "," $origins | quote }}
- name: SITE_URL
  value: {{ .Values.siteUrl | default (printf "https://%s" (trimPrefix "." (first .Values.allowedHosts))) | quote }}
- name: TRUST_X_FORWARDED_PROTO
  value: {{ .Values.trustXForwardedProto | quote }}
- name: PROMETHEUS_MULTIPROC_DIR
  value: /tmp/prometheus
{{- range (include "corral.secretItems" . | fromJsonArray) }}
- name: {{ .setting }}_FILE
  value: /run/secrets/corral/{{ .setting | lower | replace "_" "-" }}
{{- end }}
{{- if .Values.inference.enabled }}
- name: INFERENCE_BACKENDS
  value: kubernetes
- name: KUBERNETES_NAMESPACE
  value: {{ .Values.inference.namespace | quote }}
- name: KUBERNETES_VLLM_IMAGE
  value: {{ .Values.inference.vllmImage | quote }}
- name: KUBERNETES_HF_TOKEN_SECRET
  value: {{ .Values.inference.hfTokenSecret | quote }}
- name: KUBERNETES_MODELS_CLAIM
  value: {{ .Values.inference.modelsClaim | quote }}
- name: KUBERNETES_MODELS_PATH
  value: {{ .Values.inference.modelsPath | quote }}
- name: KUBERNETES_MODEL_CACHE_CLAIM
  value: {{ .Values.inference.modelCache.claimName | quote }}
- name: KUBERNETES_VLLM_CPU_REQUEST
  value: {{ .Values.inference.vllmResources.requests.cpu | quote }}
- name: KUBERNETES_VLLM_CPU_LIMIT
  value: {{ .Values.inference.vllmResources.limits.cpu | quote }}
- name: KUBERNETES_VLLM_MEMORY_REQUEST
  value: {{ .Values.inference.vllmResources.requests.memory | quote }}
- name: KUBERNETES_VLLM_MEMORY_LIMIT
  value: {{ .Values.inference.vllmResources.limits.memory | quote }}
- name: INFERENCE_STARTUP_TIMEOUT_SECONDS
  value: {{ .Values.inference.startupTimeoutSeconds | quote }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The secrets, one projected volume; /tmp and the var directory as emptyDirs (the root is read-only). */}}
{{- define "corral.volumes" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
{{- range (include "corral.secretItems" . | fromJsonArray) }}
      - secret:
          name: {{ .name }}
          items:
            - key: {{ .key }}
              path: {{ .setting | lower | replace "_" "-" }}
{{- end }}
- name: tmp
  emptyDir: {}
- name: var
  emptyDir: {}
{{- end -}}

{{- define "corral.volumeMounts" -}}
- name: secrets
  mountPath: /run/secrets/corral
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: var
  mountPath: /var/lib/corral
{{- end -}}

{{/* The pod-level fields every Corral pod shares. .root is the chart context, .process the values section. */}}
{{- define "corral.podSpec" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
enableServiceLinks: false
{{- with .process.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .process.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .process.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "corral.volumes" .root | nindent 2 }}
{{- end -}}
