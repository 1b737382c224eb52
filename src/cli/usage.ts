export class UsageError extends Error {}

export const USAGE = `usage: txmesh <command> [options]

commands:
  sidecar --config FILE   run the sidecar (flags: --app-port --egress-port --ingress-port
                          --control-port --admin-port; 0 picks a free port)
  validate FILE           check a config file; prints file:line:col for each problem
  tx list                 transactions coordinated and branches held by a sidecar
  tx show ID              one transaction (or branch) with its participants
  tx resolve ID --commit|--abort [--force]
                          decide an in-doubt branch by hand (audited in the log);
                          --force: one not in doubt yet (a heuristic decision)
  tx retry ID             saga/tcc: try the stuck steps of a transaction again
                          (tx flags: --admin URL, default http://127.0.0.1:15000; --json;
                          --token-file FILE or --token TOKEN or TXMESH_ADMIN_TOKEN when the
                          sidecar's admin API has a token)
  events list             the subscriptions a sidecar runs: lag, deliveries, dead letters
  events replay NAME --from-seq N | --from-time T
                          deliver subscription NAME's stream again from a sequence or an
                          RFC 3339 time (rebuilds a read model; same flags as tx)
  demo-app --service orders|payments|inventory [--port 8080]
                          the shop demo's app (deploy/examples/shop), on DATABASE_URL
  inject [-f FILE|-] [--image IMAGE]
                          add the sidecar to pod templates annotated txmesh.io/inject: "true"
                          (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob,
                          List); writes the manifests to stdout, other objects unchanged
  webhook --cert FILE --key FILE [--port 8443] [--host ADDR] [--image IMAGE]
                          serve the mutating admission webhook (HTTPS, POST /inject, /healthz)
  errors                  list the error codes the sidecar answers with
  version                 print the version
`
