// `txmesh events list | replay SUBSCRIPTION --from-seq N | --from-time T` against a sidecar's
// admin port: the subscriptions it runs (lag, deliveries, redeliveries, dead letters), and a
// replay that resets a subscription's consumer so a read model can be rebuilt. Admin address and
// token as for `txmesh tx`.
import { parseArgs } from 'node:util'
import { adminToken, callAdmin, fail, printJson, table } from './tx.js'
import { UsageError } from './usage.js'

type View = {
  name: string
  durable: string
  subjects: string[]
  inFlight: number
  delivered: number
  redelivered: number
  deadLettered: number
  lag?: number
  lastError?: string
}

export async function eventsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      admin: { type: 'string' },
      json: { type: 'boolean', default: false },
      'from-seq': { type: 'string' },
      'from-time': { type: 'string' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
    },
    strict: true,
  })
  const base = (values.admin ?? process.env.TXMESH_ADMIN ?? 'http://127.0.0.1:15000').replace(/\/$/, '')
  const token = adminToken(values.token, values['token-file'])
  const [sub, name] = positionals
  switch (sub) {
    case 'list': {
      const a = await callAdmin(base, 'GET', '/v1/subscriptions', undefined, token)
      if (a.status !== 200) return fail(a)
      if (values.json) return printJson(JSON.stringify(a.body))
      const views = a.body.subscriptions as View[]
      process.stdout.write(
        table(
          ['SUBSCRIPTION', 'SUBJECTS', 'LAG', 'IN FLIGHT', 'DELIVERED', 'REDELIVERED', 'DEAD LETTERS', 'LAST ERROR'],
          views.map((v) => [
            v.name,
            v.subjects.join(','),
            v.lag === undefined ? '-' : String(v.lag),
            String(v.inFlight),
            String(v.delivered),
            String(v.redelivered),
            String(v.deadLettered),
            v.lastError ?? '-',
          ]),
        ),
      )
      return 0
    }
    case 'replay': {
      if (name === undefined) throw new UsageError('txmesh events replay SUBSCRIPTION --from-seq N | --from-time T')
      const seq = values['from-seq']
      const time = values['from-time']
      if ((seq === undefined) === (time === undefined))
        throw new UsageError('txmesh events replay: give exactly one of --from-seq N and --from-time T')
      if (seq !== undefined && !/^[1-9][0-9]{0,15}$/.test(seq))
        throw new UsageError(`--from-seq: "${seq}" is not a stream sequence (1 or more)`)
      const body = seq !== undefined ? { fromSequence: Number(seq) } : { fromTime: time }
      const a = await callAdmin(base, 'POST', `/v1/subscriptions/${encodeURIComponent(name)}/replay`, body, token)
      if (a.status !== 200) return fail(a)
      if (values.json) return printJson(JSON.stringify(a.body))
      process.stdout.write(`${name}: replaying from ${seq !== undefined ? `sequence ${seq}` : time}\n`)
      return 0
    }
    default:
      throw new UsageError('txmesh events list | replay SUBSCRIPTION --from-seq N | --from-time T')
  }
}
