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
{{/* The app pods' account (api mode): it may read the route map, nothing else. */}}
{{- define "stickyroute.agentServiceAccountName" -}}
{{ include "stickyroute.fullname" . }}-agent
{{- end }}

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

{{- define "stickyroute.agentAdminPort" -}}
{{- if not (kindIs "invalid" .Values.proxy.agentAdminPort) }}
{{- .Values.proxy.agentAdminPort }}
{{- else if .Values.exampleApp.enabled }}
{{- .Values.agent.adminPort }}
{{- end }}
{{- end }}

{{/* Labels merged for a pod template: the chart's own win over the user's extra ones.
     Pass (dict "ctx" $ "component" NAME "extra" MAP). */}}
{{- define "stickyroute.podLabels" -}}
{{- $labels := fromYaml (include "stickyroute.labels" .) }}
{{- toYaml (merge $labels (.extra | default dict)) }}
{{- end }}

{{/* ---------------------------------------------------------------------------------
     The agent sidecar, for your own StatefulSet or Deployment.

     These templates are the chart's interface for app pods: the example app is built from
     them, and a parent (umbrella) chart that depends on this chart uses them for its own
     workloads. Each takes one dict:

       ctx      the stickyroute chart's context: `$` in this chart's templates, and
                `$.Subcharts.stickyroute` in a parent chart's (Helm 3.7 or later; with an
                alias, `index $.Subcharts "ALIAS"`), so that names, values and the image are
                this chart's
       appPort  the port your app listens on inside the pod (the agent forwards to
                127.0.0.1:appPort); agentSidecar only
       trackAll optional: set the balance cookie on every response, as agent.trackAll

     In a parent chart's pod template:

       {{- $sr := dict "ctx" $.Subcharts.stickyroute "appPort" 8081 }}
       metadata:
         labels:
           {{- include "stickyroute.agentPodLabels" $sr | nindent 8 }}
       spec:
         {{- include "stickyroute.agentPodSpec" $sr | nindent 6 }}
         initContainers:            # `containers` with agent.nativeSidecar: false
           {{- include "stickyroute.agentSidecar" $sr | nindent 8 }}
         containers:
           - name: app
             {{- include "stickyroute.appLifecycle" $sr | nindent 12 }}
         {{- with include "stickyroute.agentVolumes" $sr }}
         volumes:
           {{- . | nindent 8 }}
         {{- end }}
     --------------------------------------------------------------------------------- */}}

{{/* Fails with a useful message when a helper is given something else than the
     stickyroute chart's context (say, a parent chart's `$`). */}}
{{- define "stickyroute.requireContext" -}}
{{- if not (and (kindIs "map" .) .ctx (kindIs "map" .ctx.Values) .ctx.Values.agent .ctx.Values.routeMap) }}
{{- fail "the stickyroute agent templates take (dict \"ctx\" CONTEXT ...) where CONTEXT is the stickyroute chart's: $ in its own templates, $.Subcharts.stickyroute in a parent chart (Helm 3.7 or later)" }}
{{- end }}
{{- end }}

{{/* The label that marks a pod as running this release's agent: the agents'
     NetworkPolicy, their PodMonitor and the proxy's egress rule select pods by it. Goes in
     the pod template's labels (not the workload's selector, so it can be added to a
     running StatefulSet). */}}
{{- define "stickyroute.agentPodLabels" -}}
{{- include "stickyroute.requireContext" . -}}
stickyroute-agent: {{ include "stickyroute.fullname" .ctx }}
{{- end }}

{{/* Pod-level fields the agent needs: in api mode the release's agent ServiceAccount
     (RELEASE-stickyroute-agent, whose Role allows reading the one route map ConfigMap and
     nothing else: the app's containers get its token too); room for the agent's drain, then its grace
     period, then the app's own shutdown (terminationGracePeriodSeconds). */}}
{{- define "stickyroute.agentPodSpec" -}}
{{- include "stickyroute.requireContext" . -}}
{{- if include "stickyroute.apiMode" .ctx -}}
serviceAccountName: {{ include "stickyroute.agentServiceAccountName" .ctx }}
automountServiceAccountToken: true
{{ end -}}
terminationGracePeriodSeconds: {{ include "stickyroute.appTerminationGrace" .ctx }}
{{- end }}

{{/* The app container's preStop hook: it waits for the agent's drain (new sessions go
     elsewhere, this pod's sessions are served until they go quiet), so the app outlives
     it. Goes in your app container (it renders the `lifecycle` key). */}}
{{- define "stickyroute.appLifecycle" -}}
{{- include "stickyroute.requireContext" . -}}
lifecycle:
  preStop:
    httpGet:
      path: /prestop
      port: {{ .ctx.Values.agent.adminPort }}
{{- end }}

{{/* The pod's volumes for the agent: in file mode the route map ConfigMap as a directory;
     nothing in api mode. */}}
{{- define "stickyroute.agentVolumes" -}}
{{- include "stickyroute.requireContext" . -}}
{{- include "stickyroute.mapVolume" .ctx | trim }}
{{- end }}

{{/* Room for the agent's drain, then its grace period, then the app's own shutdown. */}}
{{- define "stickyroute.appTerminationGrace" -}}
{{- add .Values.agent.drainTimeoutSeconds .Values.agent.gracePeriodSeconds 10 }}
{{- end }}

{{/* The agent container, as one list item: a native sidecar (restartPolicy: Always, for
     initContainers) with agent.nativeSidecar, else a plain container (for containers). */}}
{{- define "stickyroute.agentSidecar" -}}
{{- include "stickyroute.requireContext" . -}}
{{- if not .appPort -}}
{{- fail "stickyroute.agentSidecar needs appPort: the port the app listens on inside the pod, which the agent forwards to" -}}
{{- end -}}
{{- $ := .ctx -}}
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
    # The image's user, set here too: your pod's own securityContext may name another.
    runAsUser: 65532
    runAsGroup: 65532
  {{- with (include "stickyroute.mapVolumeMount" $) }}
  volumeMounts:
    {{- . | trim | nindent 4 }}
  {{- end }}
{{- end }}
