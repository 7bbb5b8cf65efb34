{{/* Chart name, at most 63 characters (a label value). */}}
{{- define "stickyroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of the proxy's objects. */}}
{{- define "stickyroute.fullname" -}}
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

{{/* The admin Service's name: the fullname with -admin, within 63 characters. */}}
{{- define "stickyroute.adminServiceName" -}}
{{- printf "%s-admin" (include "stickyroute.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{- define "stickyroute.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change for an object: selectors use exactly these. Pass
     (dict "ctx" $ "component" "proxy"). */}}
{{- define "stickyroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stickyroute.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "stickyroute.labels" -}}
{{ include "stickyroute.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: stickyroute
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "stickyroute.chart" .ctx }}
{{- end }}

{{- define "stickyroute.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The ConfigMap that holds the route map. */}}
{{- define "stickyroute.routeMapName" -}}
{{- if .Values.routeMap.existingConfigMap }}
{{- .Values.routeMap.existingConfigMap }}
{{- else }}
{{- printf "%s-routemap" (include "stickyroute.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "stickyroute.apiMode" -}}
{{- if eq .Values.routeMap.source "api" }}true{{ end }}
{{- end }}

{{/* Where the binaries read the map: the mounted directory, or the API. */}}
{{- define "stickyroute.mapArgs" -}}
{{- if include "stickyroute.apiMode" . }}
- --routemap-configmap={{ .Release.Namespace }}/{{ include "stickyroute.routeMapName" . }}
- --routemap-key={{ .Values.routeMap.key }}
{{- else }}
- --routemap=/etc/stickyroute/routemap/{{ .Values.routeMap.key }}
{{- end }}
{{- end }}

{{/* File mode: the whole ConfigMap as a directory. Never subPath: a subPath mount is
     never updated by the kubelet. */}}
{{- define "stickyroute.mapVolume" -}}
{{- if not (include "stickyroute.apiMode" .) }}
- name: routemap
  configMap:
    name: {{ include "stickyroute.routeMapName" . }}
{{- end }}
{{- end }}

{{- define "stickyroute.mapVolumeMount" -}}
{{- if not (include "stickyroute.apiMode" .) }}
- name: routemap
  mountPath: /etc/stickyroute/routemap
  readOnly: true
{{- end }}
{{- end }}

{{/* Where the TLS Secret NAME is mounted. */}}
{{- define "stickyroute.tlsDir" -}}
/etc/stickyroute/tls/{{ . }}
{{- end }}

{{/* Each TLS Secret as a directory. Never subPath, and never the files as environment
     variables: the kubelet updates neither, and a renewed certificate would not arrive. */}}
{{- define "stickyroute.tlsVolumes" -}}
{{- if .Values.proxy.tls.enabled }}
{{- range $i, $secret := .Values.proxy.tls.secrets }}
- name: tls-{{ $i }}
  secret:
    secretName: {{ $secret }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stickyroute.tlsVolumeMounts" -}}
{{- if .Values.proxy.tls.enabled }}
{{- range $i, $secret := .Values.proxy.tls.secrets }}
- name: tls-{{ $i }}
  mountPath: {{ include "stickyroute.tlsDir" $secret }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level part of the restricted Pod Security Standard. */}}
{{- define "stickyroute.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "stickyroute.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Only API mode needs a token; file mode mounts none. */}}
{{- define "stickyroute.serviceAccount" -}}
{{- if include "stickyroute.apiMode" . }}
serviceAccountName: {{ include "stickyroute.fullname" . }}
automountServiceAccountToken: true
{{- else }}
automountServiceAccountToken: false
{{- end }}
{{- end }}

{{- define "stickyroute.memberDomainSuffix" -}}
{{- if .Values.proxy.memberDomainSuffix }}
{{- .Values.proxy.memberDomainSuffix }}
{{- else if .Values.exampleApp.enabled }}
{{- printf ".%s.%s.svc.%s" .Values.exampleApp.name .Release.Namespace .Values.clusterDomain }}
{{- end }}
{{- end }}

{{/* The Service whose EndpointSlices give the members (proxy.memberService, else the
     example app's in api mode); empty: DNS. Refused in file mode, which has no API access. */}}
{{- define "stickyroute.memberService" -}}
{{- $service := .Values.proxy.memberService }}
{{- if and (not $service) .Values.exampleApp.enabled (include "stickyroute.apiMode" .) }}
{{- $service = .Values.exampleApp.name }}
{{- end }}
{{- if and $service (not (include "stickyroute.apiMode" .)) }}
{{- fail "proxy.memberService needs routeMap.source: api (the proxy watches the EndpointSlices through the API)" }}
{{- end }}
{{- $service }}
{{- end }}

{{/* The ConfigMap balancer-manager changes are shared through (proxy.sharedOverrides: on
     by default in api mode); empty: each replica keeps its own. Refused in file mode. */}}
{{- define "stickyroute.overridesName" -}}
{{- $shared := .Values.proxy.sharedOverrides }}
{{- if eq $shared nil }}
{{- $shared = (include "stickyroute.apiMode" .) }}
{{- end }}
{{- if and $shared (not (include "stickyroute.apiMode" .)) }}
{{- fail "proxy.sharedOverrides needs routeMap.source: api (the proxies share their changes through a ConfigMap they read and write through the API)" }}
{{- end }}
{{- if $shared }}
{{- printf "%s-overrides" (include "stickyroute.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The app container's preStop hook: it waits for the agent's drain (new sessions go
     elsewhere, this pod's sessions are served until they go quiet), so the app outlives
     it. Put it in your own app container too. */}}
{{- define "stickyroute.appLifecycle" -}}
lifecycle:
  preStop:
    httpGet:
      path: /prestop
      port: {{ .Values.agent.adminPort }}
{{- end }}

{{/* Room for the agent's drain, then its grace period, then the app's own shutdown. */}}
{{- define "stickyroute.appTerminationGrace" -}}
{{- add .Values.agent.drainTimeoutSeconds .Values.agent.gracePeriodSeconds 10 }}
{{- end }}

{{- define "stickyroute.agentAdminPort" -}}
{{- if not (kindIs "invalid" .Values.proxy.agentAdminPort) }}
{{- .Values.proxy.agentAdminPort }}
{{- else if .Values.exampleApp.enabled }}
{{- .Values.agent.adminPort }}
{{- end }}
{{- end }}

{{/* The agent container; a native sidecar when agent.nativeSidecar. Pass (dict "ctx" $
     "trackAll" BOOL "appPort" PORT). */}}
{{- define "stickyroute.agentContainer" -}}
{{- $ := .ctx }}
- name: stickyroute-agent
  image: {{ include "stickyroute.image" $ }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  {{- if $.Values.agent.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  command: [/usr/local/bin/stickyroute-agent]
  args:
    - --listen=0.0.0.0:{{ $.Values.agent.port }}
    - --admin-listen=0.0.0.0:{{ $.Values.agent.adminPort }}
    - --upstream=127.0.0.1:{{ .appPort }}
    - --drain-idle={{ $.Values.agent.drainIdleSeconds }}s
    - --drain-timeout={{ $.Values.agent.drainTimeoutSeconds }}s
    - --grace-period={{ $.Values.agent.gracePeriodSeconds }}s
    {{- include "stickyroute.mapArgs" $ | trim | nindent 4 }}
    {{- with $.Values.agent.sessionCookies }}
    - --session-cookie={{ join "," . }}
    {{- end }}
    {{- if or $.Values.agent.trackAll .trackAll }}
    - --track-all
    {{- end }}
    {{- with $.Values.agent.cookie }}
    - --cookie-secure={{ .secure }}
    {{- with .sameSite }}
    - --cookie-samesite={{ . }}
    {{- end }}
    {{- if .httpOnly }}
    - --cookie-httponly
    {{- end }}
    {{- if not (kindIs "invalid" .maxAge) }}
    - --cookie-max-age={{ .maxAge }}
    {{- end }}
    {{- end }}
    - --log-format=json
    {{- if $.Values.agent.accessLog.enabled }}
    - --access-log=-
    - --access-log-format={{ $.Values.agent.accessLog.format }}
    {{- end }}
    {{- range $.Values.agent.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    # The agent's keys: its pod IP for address-keyed maps, its pod name for name-keyed ones.
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
  ports:
    - name: http
      containerPort: {{ $.Values.agent.port }}
      protocol: TCP
    - name: agent-admin
      containerPort: {{ $.Values.agent.adminPort }}
      protocol: TCP
  # Ready only once the first map is loaded, so the app never serves without its route;
  # a native sidecar's startup probe also holds the app container back until then.
  startupProbe:
    httpGet:
      path: /readyz
      port: agent-admin
    periodSeconds: 1
    failureThreshold: 120
  readinessProbe:
    httpGet:
      path: /readyz
      port: agent-admin
    periodSeconds: 5
  # Liveness never depends on the API server or the map: an outage must not restart pods.
  livenessProbe:
    httpGet:
      path: /healthz
      port: agent-admin
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- toYaml $.Values.agent.resources | nindent 4 }}
  securityContext:
    {{- include "stickyroute.containerSecurityContext" $ | nindent 4 }}
  {{- with (include "stickyroute.mapVolumeMount" $) }}
  volumeMounts:
    {{- . | trim | nindent 4 }}
  {{- end }}
{{- end }}
