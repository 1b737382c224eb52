// What must hold at the end of every simulated run, once faults stopped and the system settled.
import type { Report } from './world.js'

export function checkInvariants(r: Report): string[] {
  const v = [...r.violations]
  if (r.quiesced !== 'idle') v.push(`did not settle (${r.quiesced} bound hit at t=${r.endTime}, ${r.events} events)`)

  const app = new Map(r.participants.map((p) => [p.branch, p.app]))
  const committed = r.participants.filter((p) => p.app === 'committed').map((p) => p.branch)
  const prepared = new Set(r.preparedSet ?? [])

  // One-phase commit: the only participant decides; the coordinator never logs anything, and a
  // branch whose PREPARED(onePhase) became durable decided commit and must end committed.
  if (r.onePhase) {
    if (r.decision !== undefined) v.push('one-phase commit wrote a COMMIT record')
    if (r.preparedSet?.length !== 1) v.push(`one-phase commit with participants ${JSON.stringify(r.preparedSet)}`)
    for (const b of committed) {
      if (!prepared.has(b)) v.push(`${b} committed but was not the one-phase participant`)
      if (!r.onePhaseLogged.includes(b)) v.push(`${b} committed in one phase without a durable PREPARED(onePhase)`)
    }
    for (const b of r.onePhaseLogged) if (app.get(b) !== 'committed') v.push(`${b} logged PREPARED(onePhase) but its app ended ${app.get(b)}`)
    // The app-reported outcome is the participant's final one (read-only work matches both).
    for (const b of prepared) {
      const s = app.get(b)
      if (r.appOutcome !== undefined && s !== 'read-only' && s !== (r.appOutcome === 'committed' ? 'committed' : 'aborted')) {
        v.push(`one-phase: app was told ${r.appOutcome} but ${b} ended ${s}`)
      }
    }
  } else if (r.onePhaseLogged.length > 0) v.push(`PREPARED(onePhase) logged in a two-phase transaction: ${r.onePhaseLogged.join(',')}`)

  // Never both outcomes: not at the coordinator (any incarnation), not between it and a branch.
  const announced = new Set(r.coordinatorOutcomes)
  if (announced.size > 1) v.push(`coordinator announced both outcomes (${r.coordinatorOutcomes.join(', ')})`)
  if (announced.has('aborted') && committed.length > 0) v.push(`coordinator announced aborted but ${committed.join(',')} committed`)

  // Atomicity: a branch commits only if every branch of the transaction voted yes and the
  // COMMIT decision was durable (and named it).
  if (committed.length > 0 && !r.onePhase) {
    if (r.decision === undefined) v.push(`${committed.join(',')} committed but no COMMIT record was ever durable`)
    if (r.preparedSet === undefined) v.push(`${committed.join(',')} committed but prepare never began`)
    for (const b of prepared) if (!r.votedYes.includes(b)) v.push(`committed although ${b} never voted yes`)
    for (const b of committed) {
      if (!prepared.has(b)) v.push(`${b} committed but was not a participant when prepare began`)
      if (r.decision !== undefined && !r.decision.includes(b)) v.push(`${b} committed but is not in the COMMIT record`)
    }
  }

  // Agreement: the branches of the transaction that did work all end the same way (read-only
  // branches had nothing to commit or undo). That includes a branch enlisted after prepare
  // began but before the decision: it cannot join, so nobody may commit without it.
  const members = new Set([...prepared, ...r.joinedBeforeDecision])
  const finals = new Set([...members].map((b) => app.get(b)).filter((s) => s === 'committed' || s === 'aborted'))
  if (finals.size > 1) v.push(`participants disagree: ${[...members].map((b) => `${b}=${app.get(b)}`).join(' ')}`)

  // The sidecar's record of each branch matches what the app did.
  for (const p of r.participants) {
    if (new Set(p.sidecarOutcomes).size > 1) v.push(`${p.branch}: sidecar ended it both ways (${p.sidecarOutcomes.join(', ')})`)
    for (const o of p.sidecarOutcomes) {
      if (o === 'committed' && p.app !== 'committed' && p.app !== 'read-only') v.push(`${p.branch}: sidecar says committed, app is ${p.app}`)
      if (o === 'aborted' && p.app === 'committed') v.push(`${p.branch}: sidecar says aborted, app committed`)
    }
  }

  // The outcome the initiating app was told matches its participants.
  if (r.appOutcome === 'committed') {
    for (const b of prepared) {
      const s = app.get(b)
      if (s !== 'committed' && s !== 'read-only') v.push(`app was told committed but ${b} is ${s}`)
    }
  }
  if (r.appOutcome === 'aborted' && committed.length > 0) v.push(`app was told aborted but ${committed.join(',')} committed`)
  if (r.appRequested !== 'none' && r.appOutcome === undefined && !r.appLostAnswer) v.push(`app asked ${r.appRequested} and never got an answer`)

  // Liveness: once faults stop, everything finishes and is forgotten.
  for (const p of r.participants) {
    if (p.app === 'open' || p.app === 'prepared') v.push(`${p.branch}: app work left ${p.app}`)
    if (p.stateLeft !== undefined) v.push(`${p.branch}: sidecar still holds the branch (${p.stateLeft})`)
    if (p.preparedLive) v.push(`${p.branch}: PREPARED record without END`)
  }
  if (r.coordinatorStateLeft !== undefined) v.push(`coordinator still holds the transaction (${r.coordinatorStateLeft})`)
  if (r.decisionLive) v.push('COMMIT record without END')
  return v
}
