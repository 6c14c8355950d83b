'use strict'

// Stateless proofs, seen through the wire (customEndpointHelper): a missing proof is
// MissingProof [4], a wrong one InvalidProof [5]; a proof lives for its window and the next
// (statelessKeyWindowLength), or forever with -1; and, unlike 3.x, whose secret died with the
// process, a proof is accepted by another process on the same store and after a restart.

const fs = require('node:fs')
const path = require('node:path')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  getImageRecord,
  customEndpointHelper,
} = require('pixstore/backend')
const { asset, freshStore, runNode, WIRE } = require('./helpers.js')

const PEER = path.join(__dirname, 'fixtures', 'interop-proof-peer.js')
const WINDOW = 300

const store = freshStore()

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Sleeps until Date.now() reaches `ms` (an absolute time). */
async function sleepUntil(ms) {
  while (Date.now() < ms) await sleep(Math.max(1, ms - Date.now()))
}

/** The state byte customEndpointHelper answers. */
async function stateOf(id, token, proof) {
  const payload = await customEndpointHelper(id, token, proof)
  return payload[0]
}

/** Runs the peer process on this store; resolves what it printed, parsed. */
async function peer(args) {
  const run = await runNode(PEER, [JSON.stringify({ config: store.config, ...args })])
  expect({ code: run.code, timedOut: run.timedOut, stderr: run.stderr }).toEqual({
    code: 0,
    timedOut: false,
    stderr: '',
  })
  return JSON.parse(run.stdout)
}

let record
let other

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
  initPixstoreBackend(store.config)
  record = await saveImage(asset('1-pixel.png'))
  other = await saveImage(asset('1-pixel.webp'), 'proofs')
})

afterAll(async () => {
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

describe('missing and wrong proofs', () => {
  test.each([
    ['undefined', undefined],
    ['null', null],
    ['the empty string', ''],
  ])('a proof that is %s is MissingProof [4]', async (_, proof) => {
    expect(await stateOf(record.id, record.token, proof)).toBe(WIRE.MissingProof)
    expect(await stateOf('unknownid0000000', record.token, proof)).toBe(WIRE.MissingProof)
  })

  test('another id’s proof, altered proofs and random strings are InvalidProof [5]', async () => {
    const p = getImageRecord(record.id).statelessProof
    const flip = (c) => (c === 'A' ? 'B' : 'A')
    const wrong = {
      'another id’s proof': getImageRecord(other.id).statelessProof,
      'first character changed': flip(p[0]) + p.slice(1),
      'last character changed': p.slice(0, -1) + flip(p.at(-1)),
      'one character short': p.slice(0, -1),
      'one character more': `${p}A`,
      'padded with =': `${p}==`,
      'upper-cased': p.toUpperCase() === p ? p.toLowerCase() : p.toUpperCase(),
      'surrounded by spaces': ` ${p} `,
      'a random string': 'r4nd0m-str1ng',
      'a space': ' ',
      'very long': 'A'.repeat(100_000),
      'non-ASCII': 'ß∂ƒ©˙∆˚¬…æ',
    }
    const states = {}
    for (const [what, proof] of Object.entries(wrong)) {
      states[what] = await stateOf(record.id, record.token, proof)
    }
    expect(states).toEqual(Object.fromEntries(Object.keys(wrong).map((k) => [k, 5])))
    // The right one, for contrast.
    expect(await stateOf(record.id, record.token, p)).toBe(WIRE.Success)
  })

  test('a proof is bound to its id: it fails for every other id', async () => {
    const proof = getImageRecord(record.id).statelessProof
    expect(await stateOf(other.id, other.token, proof)).toBe(WIRE.InvalidProof)
    expect(await stateOf(`${record.id}x`, record.token, proof)).toBe(WIRE.InvalidProof)
    expect(await stateOf(`proofs:${record.id}`, record.token, proof)).toBe(WIRE.InvalidProof)
    expect(await stateOf(record.id.toUpperCase(), record.token, proof)).toBe(WIRE.InvalidProof)
  })
})

describe(`expiry with statelessKeyWindowLength: ${WINDOW}`, () => {
  beforeAll(() => initPixstoreBackend({ ...store.config, statelessKeyWindowLength: WINDOW }))
  afterAll(() => initPixstoreBackend(store.config))

  /** A proof issued early in a window; returns it with that window's number. */
  async function issueEarlyInAWindow() {
    for (;;) {
      // Wait for the start of the next window, so the checks below have room.
      await sleepUntil((Math.floor(Date.now() / WINDOW) + 1) * WINDOW + 5)
      const before = Date.now()
      const { statelessProof } = getImageRecord(record.id)
      const after = Date.now()
      const window = Math.floor(before / WINDOW)
      if (window === Math.floor(after / WINDOW) && after % WINDOW < WINDOW / 3) {
        return { proof: statelessProof, window }
      }
    }
  }

  /** The state for the proof, with the window it was checked in (both ends of the call). */
  async function checkAt(proof) {
    const before = Math.floor(Date.now() / WINDOW)
    const state = await stateOf(record.id, record.token, proof)
    return { state, windows: [before, Math.floor(Date.now() / WINDOW)] }
  }

  test('accepted in its window and the next, rejected from the one after', async () => {
    const { proof, window: w } = await issueEarlyInAWindow()

    // At once: its own window.
    expect(await checkAt(proof)).toEqual({ state: WIRE.Success, windows: [w, w] })

    // ~350 ms later: the previous window's proof is still accepted.
    await sleepUntil((w + 1) * WINDOW + WINDOW / 6)
    expect(await checkAt(proof)).toEqual({ state: WIRE.Success, windows: [w + 1, w + 1] })

    // Two windows on (~700 ms after issue): rejected, and stays so.
    await sleepUntil((w + 2) * WINDOW + WINDOW / 3)
    const late = await checkAt(proof)
    expect(late.state).toBe(WIRE.InvalidProof)
    expect(late.windows[0]).toBeGreaterThanOrEqual(w + 2)
    await sleepUntil((w + 3) * WINDOW + 10)
    expect((await checkAt(proof)).state).toBe(WIRE.InvalidProof)

    // A proof issued now works again.
    const fresh = getImageRecord(record.id).statelessProof
    expect(await stateOf(record.id, record.token, fresh)).toBe(WIRE.Success)
  })

  test('an expired proof is InvalidProof, for its own id as for an unknown one', async () => {
    const { proof, window: w } = await issueEarlyInAWindow()
    await sleepUntil((w + 2) * WINDOW + 20)
    expect(await stateOf(record.id, undefined, proof)).toBe(WIRE.InvalidProof)
    expect(await stateOf('unknownid0000000', undefined, proof)).toBe(WIRE.InvalidProof)
  })
})

describe('statelessKeyWindowLength: -1', () => {
  const never = { ...store.config, statelessKeyWindowLength: -1 }
  afterAll(() => initPixstoreBackend(store.config))

  test('a proof works after longer than any short window, and after a re-init', async () => {
    initPixstoreBackend(never)
    const { statelessProof } = getImageRecord(record.id)
    expect(await stateOf(record.id, record.token, statelessProof)).toBe(WIRE.Success)

    await sleep(3 * WINDOW + 100)
    expect(await stateOf(record.id, record.token, statelessProof)).toBe(WIRE.Success)
    expect(await stateOf(record.id, undefined, statelessProof)).toBe(WIRE.Updated)

    initPixstoreBackend(never)
    expect(await stateOf(record.id, record.token, statelessProof)).toBe(WIRE.Success)

    await closePixstoreBackend()
    initPixstoreBackend(never)
    expect(await stateOf(record.id, record.token, statelessProof)).toBe(WIRE.Success)
    // Still bound to its id.
    expect(await stateOf(other.id, other.token, statelessProof)).toBe(WIRE.InvalidProof)
  })
})

describe('across processes and restarts', () => {
  test('a proof issued by another process on the same store is accepted here', async () => {
    const issued = await peer({ op: 'issue', id: record.id })
    expect(issued).toMatchObject({ id: record.id, token: record.token, meta: record.meta })
    expect(typeof issued.statelessProof).toBe('string')
    expect(await stateOf(record.id, record.token, issued.statelessProof)).toBe(WIRE.Success)
    expect(await stateOf(record.id, undefined, issued.statelessProof)).toBe(WIRE.Updated)
    expect(await stateOf(other.id, other.token, issued.statelessProof)).toBe(WIRE.InvalidProof)
  })

  test('a proof issued here is accepted by another process on the same store', async () => {
    const { statelessProof } = getImageRecord(other.id)
    const check = (args) => peer({ op: 'check', id: other.id, proof: statelessProof, ...args })
    expect(await check({ token: other.token })).toEqual({
      state: WIRE.Success,
      length: expect.any(Number),
    })
    expect((await check({})).state).toBe(WIRE.Updated)
    expect((await check({ id: record.id, token: record.token })).state).toBe(WIRE.InvalidProof)
  })

  test('a proof survives closing and re-opening the store', async () => {
    const { statelessProof } = getImageRecord(record.id)
    await closePixstoreBackend()
    initPixstoreBackend(store.config)
    expect(await stateOf(record.id, record.token, statelessProof)).toBe(WIRE.Success)
    expect(await stateOf(record.id, undefined, statelessProof)).toBe(WIRE.Updated)
  })

  test('a proof is not accepted by a different store', async () => {
    const { statelessProof } = getImageRecord(record.id)
    const elsewhere = freshStore()
    try {
      initPixstoreBackend(elsewhere.config)
      // No record there, but the proof is checked first: a foreign proof is InvalidProof.
      expect(await stateOf(record.id, record.token, statelessProof)).toBe(WIRE.InvalidProof)
    } finally {
      initPixstoreBackend(store.config)
      fs.rmSync(elsewhere.dir, { recursive: true, force: true })
    }
  })
})
