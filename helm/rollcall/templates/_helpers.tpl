{{/*
The chart name, or nameOverride.
*/}}
{{- define "rollcall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, or the release name, followed by the
chart name unless the release name already contains it. Service names are appended to it, so
it is cut to 40 characters to keep "<prefix>-mis-adapter-tls" within 63.
*/}}
{{- define "rollcall.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "rollcall.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The chart name and version, for the helm.sh/chart label.
*/}}
{{- define "rollcall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The rollcall services, one Deployment each, in a fixed order.
*/}}
{{- define "rollcall.serviceNames" -}}
registers policy cases referrals mis-adapter
{{- end -}}

{{/*
Labels that select the release's pods.
*/}}
{{- define "rollcall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rollcall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels of every resource.
*/}}
{{- define "rollcall.labels" -}}
helm.sh/chart: {{ include "rollcall.chart" . }}
{{ include "rollcall.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rollcall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels that select one component's pods. Takes (dict "root" $ "component" NAME).
*/}}
{{- define "rollcall.componentSelectorLabels" -}}
{{ include "rollcall.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Labels of one component's resources. Takes (dict "root" $ "component" NAME).
*/}}
{{- define "rollcall.componentLabels" -}}
{{ include "rollcall.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The name of a service's resources: its Deployment, Service, ServiceAccount and the rest.
Takes (dict "root" $ "component" NAME).
*/}}
{{- define "rollcall.componentName" -}}
{{- printf "%s-%s" (include "rollcall.fullname" .root) .component -}}
{{- end -}}

{{/*
The gRPC address other services use to reach a service. Takes (dict "root" $ "component" NAME).
*/}}
{{- define "rollcall.serviceUrl" -}}
{{- printf "https://%s.%s.svc:%d" (include "rollcall.componentName" .) .root.Release.Namespace (int .root.Values.ports.grpc) -}}
{{- end -}}

{{/*
The Secret with a service's certificate, key and CA. Takes (dict "root" $ "component" NAME).
*/}}
{{- define "rollcall.tlsSecretName" -}}
{{- $service := index .root.Values.services .component -}}
{{- default (printf "%s-tls" (include "rollcall.componentName" .)) $service.tls.secretName -}}
{{- end -}}

{{/*
The image reference: the digest when given, else the tag, else the chart's appVersion.
*/}}
{{- define "rollcall.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The value of `rollcall serve --only` for a service. The registers process also hosts the
audit log.
*/}}
{{- define "rollcall.only" -}}
{{- if eq . "registers" -}}
registers,audit
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
The settings files a service reads, as "KEY:FLAG" words; only those that are set are
mounted and passed. Takes (dict "root" $ "component" NAME).
*/}}
{{- define "rollcall.settingsFiles" -}}
{{- $flags := dict "registers" (list) "policy" (list) "cases" (list "messaging") "referrals" (list "referrals") "mis-adapter" (list "delivery" "connectors") -}}
{{- $files := list "auth:--auth" -}}
{{- range $key := index $flags .component -}}
{{- if index $.root.Values.settings $key -}}
{{- $files = append $files (printf "%s:--%s" $key $key) -}}
{{- end -}}
{{- end -}}
{{- join " " $files -}}
{{- end -}}

{{/*
The pod-level security context of every pod.
*/}}
{{- define "rollcall.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The container-level security context of every container.
*/}}
{{- define "rollcall.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The database URL from its Secret, as the ROLLCALL_DATABASE_URL variable.
*/}}
{{- define "rollcall.databaseEnv" -}}
- name: ROLLCALL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.key }}
{{- end -}}

{{/*
The mount of the database server's CA certificate, for the services and the migration Job
when database.tls.enabled. The URL in the database Secret names the file by this path, so
the path is fixed: /etc/rollcall/db-ca/ca.crt.
*/}}
{{- define "rollcall.databaseCaVolumeMount" -}}
- name: db-ca
  mountPath: /etc/rollcall/db-ca
  readOnly: true
{{- end -}}

{{/*
The volume of rollcall.databaseCaVolumeMount: the key database.tls.caKey of the Secret or the
ConfigMap, as the file ca.crt.
*/}}
{{- define "rollcall.databaseCaVolume" -}}
{{- $tls := .Values.database.tls -}}
- name: db-ca
  {{- if $tls.caSecretName }}
  secret:
    secretName: {{ $tls.caSecretName }}
    {{- /* 0440: readable by the pod's fsGroup only, as the chart's other Secrets. */}}
    defaultMode: 288
  {{- else }}
  configMap:
    name: {{ $tls.caConfigMapName }}
    defaultMode: 292
  {{- end }}
    items:
      - key: {{ $tls.caKey }}
        path: ca.crt
{{- end -}}

{{/*
NetworkPolicy egress rules to DNS and to PostgreSQL, shared by the services and the migration
Job.
*/}}
{{- define "rollcall.dnsAndPostgresEgress" -}}
{{- $policy := .Values.networkPolicy -}}
- to:
    - namespaceSelector:
        {{- toYaml $policy.dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml $policy.dns.podSelector | nindent 8 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- to:
    {{- range $policy.postgres.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ $policy.postgres.port }}
      protocol: TCP
{{- end -}}
