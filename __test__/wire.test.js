'use strict'

// The wire payload byte for byte, in all seven states: from customEndpointHelper (default
// endpoint off) and over HTTP from the default endpoint. Success is [0] + the encrypted file
// exactly as it lies under the image root; Updated is [1] + the token (u64 little-endian) + key
// (32) + iv (12) + tag (16) from the record's meta + the file; every other state is one byte.
// Checks run in the order id present, proof present, proof valid, record exists, token equal.

const fs = require('node:fs')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  updateImage,
  deleteImage,
  getImageRecord,
  customEndpointHelper,
  stopDefaultEndpoint,
} = require('pixstore/backend')
const { PixstoreError } = require('pixstore/shared')
const {
  asset,
  freshStore,
  freePort,
  httpRequest,
  imagePath,
  encryptedFileOf,
  connectRefused,
  WIRE,
} = require('./helpers.js')

const store = freshStore()
const root = store.config.imageRootDir

const IMAGES = [
  ['vilnius-800.png', undefined],
  ['vilnius-800.webp', 'wire'],
  ['vilnius.jpg', 'Wire Photos'],
]

/** The encrypted file of an id, as it lies on disk. */
const fileBytes = (id) => fs.readFileSync(encryptedFileOf(root, id))

/** A meta field decoded from base64, checked for its length. */
function metaBytes(record, field, length) {
  const bytes = Buffer.from(record.meta[field], 'base64')
  expect({ field, length: bytes.length }).toEqual({ field, length })
  return bytes
}

/** The Success payload the store must send for an id: [0] + the file. */
const successBytes = (id) => Buffer.concat([Buffer.from([WIRE.Success]), fileBytes(id)])

/** The Updated payload the store must send for a record: [1] + token + key + iv + tag + file. */
function updatedBytes(record) {
  const token = Buffer.alloc(8)
  token.writeBigUInt64LE(BigInt(record.token))
  return Buffer.concat([
    Buffer.from([WIRE.Updated]),
    token,
    metaBytes(record, 'key', 32),
    metaBytes(record, 'iv', 12),
    metaBytes(record, 'tag', 16),
    fileBytes(record.id),
  ])
}

/** Compares two payloads without dumping megabytes on a failure. */
function expectBytes(actual, expected) {
  expect(actual).toBeInstanceOf(Uint8Array)
  const bytes = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength)
  let firstDifference = -1
  const same = bytes.equals(expected)
  for (let i = 0; !same && i < Math.min(bytes.length, expected.length); i++) {
    if (bytes[i] !== expected[i]) {
      firstDifference = i
      break
    }
  }
  expect({ state: bytes[0], length: bytes.length, firstDifference }).toEqual({
    state: expected[0],
    length: expected.length,
    firstDifference: -1,
  })
}

/** A bare payload: exactly one byte. */
function expectState(actual, state) {
  expect(actual).toBeInstanceOf(Uint8Array)
  expect([...actual]).toEqual([state])
}

/** Saves an image and returns its record. */
async function save(name, dir) {
  const record = await saveImage(asset(name), dir)
  expect(record).not.toBeNull()
  return record
}

/** An id whose record is gone, with a proof issued for it while it existed. */
async function deletedWithProof() {
  const record = await save('1-pixel.png')
  const { statelessProof } = getImageRecord(record.id)
  expect(await deleteImage(record.id)).toBe(true)
  expect(getImageRecord(record.id)).toBeNull()
  return { ...record, statelessProof }
}

/** An id with a record whose encrypted file was removed from disk. */
async function withoutFile() {
  const record = await save('1-pixel.webp')
  fs.rmSync(encryptedFileOf(root, record.id))
  return record
}

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
  initPixstoreBackend(store.config)
})

afterAll(async () => {
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

describe('customEndpointHelper (default endpoint disabled)', () => {
  test.each(IMAGES)('Success and Updated for %s are the exact bytes', async (name, dir) => {
    const record = await save(name, dir)
    const file = fileBytes(record.id)
    expect(file.length).toBeGreaterThan(asset(name).length) // format byte + ciphertext

    const success = await customEndpointHelper(record.id, record.token, record.statelessProof)
    expectBytes(success, successBytes(record.id))
    expect(success.length).toBe(1 + file.length)

    const updated = await customEndpointHelper(record.id, undefined, record.statelessProof)
    expectBytes(updated, updatedBytes(record))
    expect(updated.length).toBe(1 + 8 + 32 + 12 + 16 + file.length)
    expect(Number(Buffer.from(updated).readBigUInt64LE(1))).toBe(record.token)
  })

  test('after updateImage: the old token gets Updated with the new token, meta and file', async () => {
    const old = await save('vilnius-800.png', 'wire')
    const oldFile = fileBytes(old.id)
    const current = await updateImage(old.id, asset('vilnius.jpg'))
    expect(current.token).toBeGreaterThan(old.token)

    const stale = await customEndpointHelper(old.id, old.token, old.statelessProof)
    expectBytes(stale, updatedBytes(current))
    expect(Buffer.from(stale).subarray(69).equals(oldFile)).toBe(false)

    const fresh = await customEndpointHelper(old.id, current.token, current.statelessProof)
    expectBytes(fresh, successBytes(old.id))
  })

  test('NotFound [2]: a valid proof for an id whose record was deleted', async () => {
    const gone = await deletedWithProof()
    expectState(await customEndpointHelper(gone.id, gone.token, gone.statelessProof), 2)
    expectState(await customEndpointHelper(gone.id, undefined, gone.statelessProof), 2)
  })

  test.each([
    ['an empty id', ''],
    ['an undefined id', undefined],
    ['a null id', null],
  ])('MissingID [3]: %s, with or without a proof', async (_, id) => {
    const record = await save('1-pixel.png')
    expectState(await customEndpointHelper(id, record.token, record.statelessProof), 3)
    expectState(await customEndpointHelper(id, undefined, undefined), 3)
    expectState(await customEndpointHelper(id, record.token, 'not a proof'), 3)
  })

  test.each([
    ['undefined', undefined],
    ['null', null],
    ['the empty string', ''],
  ])('MissingProof [4]: a proof that is %s', async (_, proof) => {
    const record = await save('1-pixel.png')
    expectState(await customEndpointHelper(record.id, record.token, proof), 4)
    expectState(await customEndpointHelper(record.id, undefined, proof), 4)
  })

  test('InvalidProof [5]: another id’s proof, a changed proof, a random string', async () => {
    const record = await save('1-pixel.png')
    const other = await save('1-pixel.webp')
    const p = record.statelessProof
    const changed = (p[0] === 'A' ? 'B' : 'A') + p.slice(1)
    for (const proof of [other.statelessProof, changed, 'garbage', 'A'.repeat(10_000), `${p} `]) {
      expect({
        proof: proof.slice(0, 40),
        state: [...(await customEndpointHelper(record.id, record.token, proof))],
      }).toEqual({ proof: proof.slice(0, 40), state: [5] })
    }
  })

  test('InternalError [6]: record and proof valid, but the encrypted file is gone', async () => {
    const record = await withoutFile()
    expectState(await customEndpointHelper(record.id, record.token, record.statelessProof), 6)
    expectState(await customEndpointHelper(record.id, undefined, record.statelessProof), 6)
  })

  test('the checks run in the documented order', async () => {
    const record = await save('1-pixel.png')
    const other = await save('1-pixel.webp')
    const gone = await deletedWithProof()
    const broken = await withoutFile()
    const unknown = 'zzzzzzzzzzzzzzzzzzzz'

    const cases = [
      // id missing wins over everything
      ['no id, no proof', [undefined, undefined, undefined], 3],
      ['no id, an invalid proof', ['', 1, 'garbage'], 3],
      // then the proof's presence
      ['an unknown id, no proof', [unknown, undefined, undefined], 4],
      ['a deleted id, no proof', [gone.id, gone.token, undefined], 4],
      ['a record without file, no proof', [broken.id, broken.token, ''], 4],
      ['a syntactically invalid id, no proof', ['../../etc/passwd', 1, undefined], 4],
      // then its validity
      ['an unknown id, a random proof', [unknown, 1, 'garbage'], 5],
      ['an unknown id, another id’s proof', [unknown, 1, record.statelessProof], 5],
      ['a syntactically invalid id, a proof', ['../../etc/passwd', 1, record.statelessProof], 5],
      ['a deleted id, another id’s proof', [gone.id, gone.token, other.statelessProof], 5],
      ['a record without file, a wrong proof', [broken.id, broken.token, record.statelessProof], 5],
      // then the record
      ['a deleted id, its proof', [gone.id, gone.token, gone.statelessProof], 2],
      // then the file and token
      ['a record without file, its proof', [broken.id, broken.token, broken.statelessProof], 6],
      ['a record, its proof, its token', [record.id, record.token, record.statelessProof], 0],
      ['a record, its proof, no token', [record.id, undefined, record.statelessProof], 1],
    ]
    const actual = []
    for (const [what, args] of cases) {
      const payload = await customEndpointHelper(...args)
      actual.push([what, payload[0], payload[0] > 1 ? payload.length : 'body'])
    }
    expect(actual).toEqual(cases.map(([what, , state]) => [what, state, state > 1 ? 1 : 'body']))
  })

  test('clientToken: an equal number or numeric string is Success, anything else Updated', async () => {
    const record = await save('1-pixel.png')
    const { id, token, statelessProof } = record
    const success = successBytes(id)
    const updated = updatedBytes(record)

    for (const clientToken of [token, String(token)]) {
      expectBytes(await customEndpointHelper(id, clientToken, statelessProof), success)
    }
    const others = [NaN, undefined, null, 'abc', '', 1.5, token + 0.5, token + 1, token - 1, 0, -1]
    for (const clientToken of [...others, `${token}x`, `x${token}`, Infinity]) {
      const payload = await customEndpointHelper(id, clientToken, statelessProof)
      expect({ clientToken: String(clientToken), state: payload[0] }).toEqual({
        clientToken: String(clientToken),
        state: 1,
      })
      expectBytes(payload, updated)
    }
  })
})

describe('over HTTP from the default endpoint', () => {
  let port

  beforeAll(async () => {
    port = await freePort()
    initPixstoreBackend({
      ...store.config,
      defaultEndpointEnabled: true,
      defaultEndpointListenHost: '127.0.0.1',
      defaultEndpointListenPort: port,
    })
  })

  afterAll(() => initPixstoreBackend(store.config))

  /** GETs an id's payload; `token` and `proof` become the headers when given. */
  async function get(id, { token, proof } = {}) {
    const headers = {}
    if (proof !== undefined) headers['x-pixstore-proof'] = proof
    if (token !== undefined) headers['x-pixstore-token'] = String(token)
    const res = await httpRequest(port, imagePath(id), { headers })
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toBe('application/octet-stream')
    expect(Number(res.headers['content-length'])).toBe(res.body.length)
    return res.body
  }

  test.each(IMAGES)('Success and Updated for %s are the exact bytes', async (name, dir) => {
    const record = await save(name, dir)
    const proof = record.statelessProof
    expectBytes(await get(record.id, { token: record.token, proof }), successBytes(record.id))
    expectBytes(await get(record.id, { proof }), updatedBytes(record))
    expectBytes(await get(record.id, { token: 'abc', proof }), updatedBytes(record))
    expectBytes(await get(record.id, { token: record.token - 1, proof }), updatedBytes(record))
  })

  test('after updateImage: the old token gets Updated with the new record', async () => {
    const old = await save('vilnius-800.webp')
    const current = await updateImage(old.id, asset('vilnius-800.png'))
    const stale = await get(old.id, { token: old.token, proof: old.statelessProof })
    expectBytes(stale, updatedBytes(current))
  })

  test('NotFound [2], MissingProof [4], InvalidProof [5], InternalError [6]', async () => {
    const record = await save('1-pixel.png')
    const gone = await deletedWithProof()
    const broken = await withoutFile()

    expectState(await get(gone.id, { token: gone.token, proof: gone.statelessProof }), 2)
    expectState(await get(record.id, { token: record.token }), 4)
    expectState(await get(record.id, { token: record.token, proof: '' }), 4)
    expectState(await get(record.id, { token: record.token, proof: 'garbage' }), 5)
    expectState(await get(record.id, { proof: broken.statelessProof }), 5)
    expectState(await get(broken.id, { token: broken.token, proof: broken.statelessProof }), 6)
  })

  test('MissingID: a request without an id is the 400 the reference documents', async () => {
    for (const path of ['/pixstore-image', '/pixstore-image/']) {
      const res = await httpRequest(port, path)
      expect({ path, status: res.status, body: res.body.toString() }).toEqual({
        path,
        status: 400,
        body: 'Missing image id',
      })
    }
  })

  test('customEndpointHelper fails with DEFAULT_ENDPOINT_RUNNING until stopDefaultEndpoint', async () => {
    const record = await save('1-pixel.png')
    const args = [record.id, record.token, record.statelessProof]

    const err = await customEndpointHelper(...args).then(
      () => null,
      (e) => e,
    )
    expect(err).toBeInstanceOf(PixstoreError)
    expect(err).toMatchObject({ name: 'PixstoreError', code: 'DEFAULT_ENDPOINT_RUNNING' })
    expect(err.message).toMatch(/stopDefaultEndpoint/)

    await expect(stopDefaultEndpoint()).resolves.toBeUndefined()
    expect(await connectRefused(port)).toBe(true)
    expectBytes(await customEndpointHelper(...args), successBytes(record.id))
    // Stopping again is harmless.
    await expect(stopDefaultEndpoint()).resolves.toBeUndefined()
  })
})
