{{/* Chart name, truncated to a DNS label. */}}
{{- define "dask-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name, also the DaskCluster's: at most 53 characters, so "<name>-scheduler" is a DNS label. */}}
{{- define "dask-cluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dask-cluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "dask-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The scheduler Service's DNS name, as pods of any namespace resolve it. */}}
{{- define "dask-cluster.schedulerHost" -}}
{{- printf "%s-scheduler.%s.svc.%s" (include "dask-cluster.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "dask-cluster.image" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{- define "dask-cluster.pullSecrets" -}}
{{- toYaml . }}
{{- end }}

{{/* A worker template (spec.worker) from one set of worker values: the default group's or an extra one's.
     Called with (dict "w" <values> "replicas" <bool: write replicas>). */}}
{{- define "dask-cluster.worker" -}}
{{- $w := .w -}}
{{- if .replicas }}
replicas: {{ $w.replicas }}
{{- end }}
{{- if or $w.podLabels $w.podAnnotations }}
metadata:
  {{- with $w.podLabels }}
  labels: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.podAnnotations }}
  annotations: {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
spec:
  {{- with $w.image.pullSecrets }}
  imagePullSecrets: {{- include "dask-cluster.pullSecrets" . | nindent 4 }}
  {{- end }}
  {{- with $w.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- with $w.nodeSelector }}
  nodeSelector: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.tolerations }}
  tolerations: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.affinity }}
  affinity: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.podSecurityContext }}
  securityContext: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $w.mounts.volumes }}
  volumes: {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: worker
      image: {{ include "dask-cluster.image" $w.image }}
      imagePullPolicy: {{ $w.image.pullPolicy }}
      # --name $(DASK_WORKER_NAME): the Dask worker is named after its pod, which is how a graceful
      # scale-down finds the pod of a retired worker.
      args:
        - dask
        - worker
        - --name
        - $(DASK_WORKER_NAME)
        - --dashboard
        - --dashboard-address
        - "8788"
        {{- range $w.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      ports:
        - name: http-dashboard
          containerPort: 8788
          protocol: TCP
      {{- with $w.env }}
      env: {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.resources }}
      resources: {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.securityContext }}
      securityContext: {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $w.mounts.volumeMounts }}
      volumeMounts: {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
