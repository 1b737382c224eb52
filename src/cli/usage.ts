export class UsageError extends Error {}

export const USAGE = `usage: txmesh <command> [options]

commands:
  sidecar --config FILE   run the sidecar (flags: --app-port --egress-port --ingress-port
                          --control-port --admin-port; 0 picks a free port)
  validate FILE           check a config file; prints file:line:col for each problem
  errors                  list the error codes the sidecar answers with
  version                 print the version
`
