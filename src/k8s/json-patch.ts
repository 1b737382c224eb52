// JSON Patch (RFC 6902), the subset injection needs: `add` and `replace`. The injector expresses
// every change as these operations; the webhook sends them as they are, and `txmesh inject`
// applies the same operations to plain objects (here) and to the YAML document (manifests.ts),
// so the two can never disagree about what injection does.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }
export type JsonObject = { [key: string]: Json }

export type PatchOp = { op: 'add'; path: string; value: Json } | { op: 'replace'; path: string; value: Json }

/** RFC 6901: `~` becomes `~0` and `/` becomes `~1` (in that order, so `~1` in a key survives). */
export function escapeSegment(segment: string | number): string {
  return String(segment).replace(/~/g, '~0').replace(/\//g, '~1')
}

export function pointer(...segments: (string | number)[]): string {
  return segments.map((s) => '/' + escapeSegment(s)).join('')
}

export function parsePointer(path: string): string[] {
  if (path === '') return []
  if (!path.startsWith('/')) throw new Error(`JSON pointer "${path}" does not start with /`)
  return path
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
}

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Index of a segment in an array: a decimal within bounds, or `-` (append) when `add` allows. */
export function arrayIndex(segment: string, length: number, append: boolean): number {
  if (append && segment === '-') return length
  if (!/^(0|[1-9]\d*)$/.test(segment)) throw new Error(`"${segment}" is not an array index`)
  const i = Number(segment)
  if (i > length || (!append && i === length)) throw new Error(`index ${i} is out of bounds (length ${length})`)
  return i
}

/** Applies the operations to a copy of `doc` and returns it; throws when a path does not exist. */
export function applyPatch<T extends Json>(doc: T, ops: readonly PatchOp[]): T {
  const root = structuredClone(doc) as Json
  for (const op of ops) {
    const segments = parsePointer(op.path)
    const last = segments.pop()
    if (last === undefined) throw new Error('a patch of the whole document is not supported')
    let parent: Json = root
    for (const s of segments) {
      const next: Json | undefined = Array.isArray(parent)
        ? parent[arrayIndex(s, parent.length, false)]
        : isObject(parent)
          ? parent[s]
          : undefined
      if (next === undefined) throw new Error(`${op.op} ${op.path}: no value at /${s}`)
      parent = next
    }
    const value = structuredClone(op.value)
    if (Array.isArray(parent)) {
      const i = arrayIndex(last, parent.length, op.op === 'add')
      if (op.op === 'add') parent.splice(i, 0, value)
      else parent[i] = value
    } else if (isObject(parent)) {
      if (op.op === 'replace' && !(last in parent)) throw new Error(`replace ${op.path}: no value to replace`)
      parent[last] = value
    } else {
      throw new Error(`${op.op} ${op.path}: the parent is not an object or array`)
    }
  }
  return root as T
}
