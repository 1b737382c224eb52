// `txmesh inject` over a YAML stream: several documents, `kind: List`, comments. A document the
// injector does not change is copied byte for byte from the input. A changed one is the YAML
// document with the injector's JSON Patch applied to its syntax tree, so its comments, key order
// and quoting survive. Running inject on its own output copies every document: the injected ones
// carry txmesh.io/status and the retargeted Services already target the ingress port.
import { LineCounter, isMap, isScalar, isSeq, parseAllDocuments, type Document } from 'yaml'
import { InjectError, ManifestInvalidError, TxmeshError } from '../errors.js'
import { LIMITS } from '../limits.js'
import { injectObject, type InjectedTemplate, type InjectOptions } from './inject.js'
import { arrayIndex, isObject, parsePointer, type Json, type PatchOp } from './json-patch.js'
import { retargetService } from './service-target.js'

export interface ManifestsResult {
  readonly output: string
  /** file:line:col: message lines for the operator (stderr). */
  readonly warnings: readonly string[]
  /** Pod templates injected, and Service ports pointed at the ingress port. */
  readonly injected: number
  readonly retargeted: number
}

interface Doc {
  readonly doc: Document.Parsed
  readonly index: number
  readonly start: number
  readonly end: number
  readonly value: Json
  patch: PatchOp[]
}

export function injectManifests(text: string, file: string, options: InjectOptions = {}): ManifestsResult {
  const lines = new LineCounter()
  const parsed = parseAllDocuments(text, { lineCounter: lines, prettyErrors: false })
  if (!Array.isArray(parsed) || parsed.length === 0) return { output: text, warnings: [], injected: 0, retargeted: 0 }
  const at = (offset: number): string => {
    const p = lines.linePos(offset)
    return `${file}:${p.line}:${p.col}`
  }

  const docs: Doc[] = parsed.map((doc, index) => {
    const first = doc.errors[0]
    if (first !== undefined)
      throw new ManifestInvalidError(`${at(first.pos[0])}: ${first.message.split('\n')[0] ?? first.message}`)
    let value: Json
    try {
      value = (doc.toJS({ maxAliasCount: LIMITS.manifestMaxAliases }) ?? null) as Json
    } catch (err) {
      throw new ManifestInvalidError(`${at(doc.range[0])}: ${(err as Error).message}`, { cause: err })
    }
    const start = index === 0 ? 0 : doc.range[0]
    const next = parsed[index + 1]
    return { doc, index, start, end: next === undefined ? text.length : next.range[0], value, patch: [] }
  })

  const warnings: string[] = []
  const templates: InjectedTemplate[] = []
  let injected = 0
  for (const d of docs) {
    const outcome = located(d, at, () => injectObject(d.value, options))
    if (outcome === undefined) continue
    for (const w of outcome.warnings) warnings.push(`${at(nodeOffset(d, w.path))}: ${w.message}`)
    for (const t of outcome.templates) {
      if (t.injected !== undefined) templates.push(t.injected)
      if (t.kind === 'injected') injected++
    }
    d.patch.push(...outcome.patch)
  }

  // Second pass: a Service may come before the workload it selects.
  let retargeted = 0
  for (const d of docs) {
    const items =
      isObject(d.value) && Array.isArray(d.value.items) && String(d.value.kind).endsWith('List')
        ? d.value.items
        : undefined
    const ops =
      items === undefined
        ? retargetService(d.value, '', templates)
        : items.flatMap((item, i) => retargetService(item, `/items/${i}`, templates))
    retargeted += ops.length
    d.patch.push(...ops)
  }

  const out = docs.map((d) => {
    const original = text.slice(d.start, d.end)
    if (d.patch.length === 0) return original
    located(d, at, () => applyToYaml(d.doc, d.patch))
    let s = d.doc.toString(stringifyOptions(original))
    if (d.index > 0 && !s.startsWith('---')) s = '---\n' + s
    return s
  })
  return { output: out.join(''), warnings, injected, retargeted }
}

function contentStart(d: Doc): number {
  return d.doc.contents?.range[0] ?? d.doc.range[0]
}

/** Runs `fn`; an InjectError's JSON pointer becomes the file:line:col of that node. */
function located<T>(d: Doc, at: (offset: number) => string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (!(err instanceof TxmeshError)) throw err
    const path = err instanceof InjectError ? err.path : undefined
    const value = isObject(d.value) ? d.value : {}
    const meta = isObject(value.metadata) ? value.metadata : {}
    const what = `${typeof value.kind === 'string' ? value.kind : 'object'}/${typeof meta.name === 'string' ? meta.name : '?'} (document ${d.index + 1})`
    const message = `${at(nodeOffset(d, path))}: ${what}: ${err.message}`
    const Ctor = err.constructor as new (message: string, options?: { cause?: unknown; path?: string }) => TxmeshError
    throw new Ctor(message, { cause: err, ...(path === undefined ? {} : { path }) })
  }
}

/** Offset of the deepest existing node on `path` (the document's start without one). */
function nodeOffset(d: Doc, path: string | undefined): number {
  let node: unknown = d.doc.contents
  let offset = contentStart(d)
  if (path === undefined) return offset
  for (const seg of safePointer(path)) {
    const next = isMap(node) ? node.get(seg, true) : isSeq(node) ? node.get(Number(seg), true) : undefined
    if (next === undefined || next === null || typeof next !== 'object' || !('range' in next)) break
    node = next
    const range = (next as { range?: [number, number, number] | null }).range
    if (range) offset = range[0]
  }
  return offset
}

function safePointer(path: string): string[] {
  try {
    return parsePointer(path)
  } catch {
    return []
  }
}

/** The injector's operations applied to the YAML syntax tree, keeping comments and order. */
export function applyToYaml(doc: Document, ops: readonly PatchOp[]): void {
  for (const op of ops) {
    const segments = parsePointer(op.path)
    const last = segments.pop()
    if (last === undefined) throw new ManifestInvalidError('cannot replace a whole document')
    let node: unknown = doc.contents
    for (const seg of segments) {
      const next: unknown = isMap(node)
        ? node.get(seg, true)
        : isSeq(node)
          ? node.get(arrayIndex(seg, node.items.length, false), true)
          : undefined
      if (next === undefined) {
        throw new ManifestInvalidError(
          `cannot apply ${op.op} ${op.path}: nothing at /${seg} (a YAML alias or merge key on the way?)`,
          { path: op.path },
        )
      }
      node = next
    }
    if (isSeq(node)) {
      const i = arrayIndex(last, node.items.length, op.op === 'add')
      const created = doc.createNode(op.value)
      if (op.op === 'add') node.items.splice(i, 0, created)
      else node.items[i] = created
    } else if (isMap(node)) {
      const prev = node.get(last, true)
      // A scalar replaced by a scalar keeps its node, so a comment after the value survives.
      if (isScalar(prev) && (op.value === null || typeof op.value !== 'object')) prev.value = op.value
      else node.set(last, doc.createNode(op.value))
    } else {
      throw new ManifestInvalidError(
        `cannot apply ${op.op} ${op.path}: the parent is not a mapping or sequence (a YAML alias?)`,
        { path: op.path },
      )
    }
  }
}

/** Keeps the document's own layout habits where the YAML library lets us choose. */
function stringifyOptions(source: string): { lineWidth: number; indentSeq: boolean; flowCollectionPadding: boolean } {
  // `key:\n- item` (kubectl's style) versus `key:\n  - item`; the first block sequence decides.
  const seq = /^( *)[^\s#-][^\n]*:[ \t]*(?:#[^\n]*)?\r?\n((?:[ \t]*(?:#[^\n]*)?\r?\n)*)( *)- /m.exec(source)
  const indentSeq = seq === null ? true : (seq[3] ?? '').length > (seq[1] ?? '').length
  return {
    // Never fold long strings (the iptables script, images): folding changes nothing for YAML but
    // makes diffs of injected manifests noisy.
    lineWidth: 0,
    indentSeq,
    flowCollectionPadding: !/[{[][^\s\]}]/.test(source),
  }
}
