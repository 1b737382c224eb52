// The few Kubernetes shapes the injector writes, as plain JSON types. They are a subset of the
// core/v1 API; test/unit/k8s-inject.test.ts checks at compile time that every field named here
// exists in kubernetes-models' types, so a misspelt field cannot slip into a manifest (the
// OpenAPI validators ignore unknown fields).

export type EnvVar = {
  name: string
  value?: string
  valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string } }
}

export type EnvFromSource = { configMapRef: { name: string; optional: boolean } }

export type ContainerPort = { name: string; containerPort: number; protocol: 'TCP' }

export type Probe = {
  httpGet: { path: string; port: string }
  periodSeconds: number
  timeoutSeconds: number
  failureThreshold: number
}

export type SecurityContext = {
  runAsNonRoot: boolean
  runAsUser: number
  runAsGroup: number
  readOnlyRootFilesystem: boolean
  allowPrivilegeEscalation: boolean
  privileged?: boolean
  capabilities: { add?: string[]; drop: string[] }
  seccompProfile: { type: 'RuntimeDefault' }
}

export type ResourceList = { cpu?: string; memory?: string }
export type ResourceRequirements = { requests?: ResourceList; limits?: ResourceList }

export type VolumeMount = { name: string; mountPath: string; readOnly?: boolean; subPathExpr?: string }

export type Container = {
  name: string
  image: string
  command?: string[]
  args?: string[]
  restartPolicy?: 'Always'
  env?: EnvVar[]
  envFrom?: EnvFromSource[]
  ports?: ContainerPort[]
  startupProbe?: Probe
  readinessProbe?: Probe
  livenessProbe?: Probe
  resources?: ResourceRequirements
  securityContext: SecurityContext
  volumeMounts?: VolumeMount[]
}

export type Volume = {
  name: string
  emptyDir?: { medium?: string; sizeLimit?: string }
  persistentVolumeClaim?: { claimName: string }
  configMap?: { name: string; items: { key: string; path: string }[] }
  secret?: { secretName: string; items?: { key: string; path: string }[] }
  projected?: {
    sources: (
      | { serviceAccountToken: { path: string; expirationSeconds: number } }
      | { configMap: { name: string; items: { key: string; path: string }[] } }
      | { downwardAPI: { items: { path: string; fieldRef: { fieldPath: string } }[] } }
    )[]
  }
}
