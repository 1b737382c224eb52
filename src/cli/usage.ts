export class UsageError extends Error {}

export const USAGE = `usage: txmesh <command> [options]

commands:
  sidecar --config FILE   run the sidecar (flags: --app-port --egress-port --ingress-port
                          --control-port --admin-port; 0 picks a free port)
  validate FILE           check a config file; prints file:line:col for each problem
  tx list                 transactions coordinated and branches held by a sidecar
  tx show ID              one transaction (or branch) with its participants
  tx resolve ID --commit|--abort
                          decide an in-doubt branch by hand (audited in the log)
  tx retry ID             saga/tcc: try the stuck steps of a transaction again
                          (tx flags: --admin URL, default http://127.0.0.1:15000; --json)
  errors                  list the error codes the sidecar answers with
  version                 print the version
`
