'use strict'

// pixstore/frontend in Node: fake-indexeddb for IndexedDB, Node's WebCrypto for decryption. The
// module is ESM, so each scenario runs in a child process (fixtures/frontend-scenarios.mjs) that
// prints what it saw; the browser suite runs the same module in Chromium.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const { runNode } = require('./helpers.js')

const REPO = path.join(__dirname, '..')
const SCENARIOS = path.join(__dirname, 'fixtures', 'frontend-scenarios.mjs')

/** Runs one scenario and returns its JSON observations. */
async function scenario(name, ...args) {
  const { code, stdout, stderr, timedOut } = await runNode(SCENARIOS, [name, ...args], {
    timeout: 60_000,
  })
  expect({ name, code, timedOut, stderr: code === 0 ? '' : stderr }).toEqual({
    name,
    code: 0,
    timedOut: false,
    stderr: '',
  })
  return JSON.parse(stdout.trim().split('\n').at(-1))
}

const pixstoreError = (code) => ({
  error: expect.objectContaining({ name: 'PixstoreError', code }),
})

test('the module uses no Node API and imports nothing', () => {
  const source = fs.readFileSync(path.join(REPO, 'frontend', 'index.mjs'), 'utf8')
  expect(source).not.toMatch(/^\s*import[\s{(]/m)
  expect(source).not.toMatch(/\brequire\(|\bprocess\.|\bBuffer\b|\bnode:|\bimport\(/)
})

test('the default fetcher against the native default endpoint, by origin and by host and port', async () => {
  const seen = await scenario('default-endpoint')
  const encodedId = encodeURIComponent(seen.id)
  expect(seen.afterSave).toEqual({
    type: 'image/jpeg',
    same: true,
    againSame: true,
    requests: 1,
    url: `http://127.0.0.1:${seen.port}/pixstore-image/${encodedId}`,
    tokenHeader: true,
    proofHeader: true,
    cached: true,
  })
  expect(seen.afterUpdate).toEqual({
    oldFromCache: true,
    oldRecordGetsNewImage: true,
    type: 'image/png',
    newRecordSame: true,
    requests: 2,
    cachedToken: true,
  })
  expect(seen.bareHost).toEqual({
    url: expect.stringMatching(new RegExp(`^http://127\\.0\\.0\\.1:${seen.port}/pixstore-image/`)),
    type: 'image/webp',
    same: true,
  })
  expect(seen.deletions).toEqual([true, false, false])
})

test('every wire state from customEndpointHelper, and broken payloads', async () => {
  const seen = await scenario('wire-states')
  expect(seen.found).toEqual({ value: 'Blob image/jpeg' })
  expect(seen.context).toEqual({ from: 'test' })
  expect(seen.states).toEqual({
    invalidProof: pixstoreError('INVALID_PROOF'),
    missingProof: pixstoreError('MISSING_PROOF'),
    internalError: pixstoreError('ENDPOINT_ERROR'),
    notFound: pixstoreError('NOT_FOUND'),
  })
  expect(seen.states.notFound.error.message).toMatch(/^Image not found: \w+$/)
  expect(seen.broken).toEqual({
    empty: pixstoreError('ENDPOINT_ERROR'),
    unknownState: pixstoreError('ENDPOINT_ERROR'),
    missingId: pixstoreError('MISSING_ID'),
    shortUpdated: pixstoreError('ENDPOINT_ERROR'),
    wrongKey: pixstoreError('INTEGRITY_ERROR'),
    notBytes: { error: expect.objectContaining({ name: 'TypeError' }) },
    arrayBuffer: { value: 'Blob image/jpeg' },
    badMeta: pixstoreError('INVALID_ARGUMENT'),
  })
  // Messages name the id, never key material.
  expect(seen.broken.badMeta.error.message).toBe(
    'getImage: record.meta.iv of canned:one must be 12 bytes in base64, received 3 bytes',
  )
})

test("payloads made by pixstore 3.2.1's encryption and wire encoder", async () => {
  const seen = await scenario('v3-payloads')
  expect(seen).toEqual({
    successSeen: { type: 'image/jpeg', same: true },
    updatedSeen: { type: 'image/webp', same: true },
    cachedToken: 2000,
    notFound: pixstoreError('NOT_FOUND'),
  })
})

test('an Updated payload older than the cached image never replaces it', async () => {
  expect(await scenario('stale-updated')).toEqual({
    tokensGrow: true,
    cachedSecond: true,
    staleServedToCaller: true,
    keptToken: true,
    keptBytes: true,
    stillHit: true,
    newerReplaced: true,
  })
})

test('concurrent getImage calls for one id make one request', async () => {
  expect(await scenario('concurrent')).toEqual({
    sameId: { requests: 1, allSame: true },
    cachedAfter: 1,
    twoIds: 2,
    olderThenNewer: { requests: 1, older: true, newer: true },
    newerThenOlder: { requests: [true], fromCache: true, fetched: true },
  })
})

test.each([
  ['created by this module', [], ['lastUsed']],
  ['created by pixstore 3.x (no index)', ['3x'], []],
])(
  'LRU cleanup above the limit removes frontendCleanupBatch entries, in a store %s',
  async (_label, args, indexNames) => {
    expect(await scenario('lru', ...args)).toEqual({
      full: ['img0', 'img1', 'img2', 'img3', 'img4'],
      touchRequests: 5,
      // limit 5, batch 2: the sixth entry removes img2 and img3, the least recently used.
      afterCleanup: ['img0', 'img1', 'img4', 'img5'],
      reloaded: ['img0', 'img1', 'img2', 'img4', 'img5'],
      // limit lowered to 2: cleanup removes as many as it takes, not just one batch.
      shrunk: ['img2', 'img6'],
      indexNames,
    })
  },
)

test('the connect host may be a full origin, a host name with the port, or IPv6', async () => {
  const seen = await scenario('origins')
  const id = 'dir%3Akey%20one'
  expect(seen.urls).toEqual({
    pageHost: `http://pics.example:3001/pixstore-image/${id}`,
    bare: `http://img.example:3001/pixstore-image/${id}`,
    barePort: `http://img.example:8080/pixstore-image/${id}`,
    https: `https://img.example/pixstore-image/${id}`,
    httpsPort: `https://img.example:8443/pixstore-image/${id}`,
    httpPort: `http://host:8080/pixstore-image/${id}`,
    trailingSlash: `https://img.example/pixstore-image/${id}`,
    ipv6: `http://[::1]:3001/pixstore-image/${id}`,
    route: `http://img.example:3001/img/${id}`,
  })
  expect(seen.headers).toEqual({
    'x-pixstore-token': '1796315836813',
    'x-pixstore-proof': 'proof-xyz',
  })
  expect(seen.cache).toBe('no-store')
  for (const [host, result] of Object.entries(seen.rejected)) {
    expect({ host, result }).toEqual({ host, result: pixstoreError('INVALID_CONFIG') })
  }
  expect(Object.keys(seen.rejected)).toHaveLength(6)
})

test('format bytes become MIME types, jpg as image/jpeg', async () => {
  const seen = await scenario('formats')
  expect(seen.defaults).toEqual({
    'vilnius.jpg': { type: 'image/jpeg', same: true },
    'vilnius-800.png': { type: 'image/png', same: true },
    'vilnius-800.webp': { type: 'image/webp', same: true },
  })
  expect(seen.custom).toEqual({
    'vilnius.jpg': { type: 'image/jpeg', same: true },
    'vilnius-800.gif': { type: 'image/gif', same: true },
    'vilnius-800.avif': { type: 'image/avif', same: true },
    'vilnius-800.bmp': { type: 'image/bmp', same: true },
    'vilnius-800.tiff': { type: 'image/tiff', same: true },
  })
  expect(seen.unnamed).toEqual(pixstoreError('INVALID_IMAGE'))
})

test('the cache holds { id, encrypted, token, lastUsed } and no key, IV, tag or proof', async () => {
  const seen = await scenario('no-key-material')
  const entry = {
    fields: ['encrypted', 'id', 'lastUsed', 'token'],
    encryptedIsBytes: true,
    bytesHoldSecret: false,
    textHoldsSecret: false,
    equalsFileOnDisk: true,
    tokenIsCurrent: true,
  }
  expect(seen).toEqual({ count: 2, b2Token: true, stored: [entry, entry] })
})

test('error handling modes, as in the backend', async () => {
  const seen = await scenario('error-modes')
  const typeError = { error: expect.objectContaining({ name: 'TypeError' }) }
  const notSet = { error: { name: 'Error', message: 'Custom error handler is not set' } }
  expect(seen.results).toEqual({
    hybrid: {
      pixstoreError: { value: null },
      typeError,
      warnings: ['NOT_FOUND'],
      last: 'NOT_FOUND',
    },
    throw: {
      pixstoreError: pixstoreError('NOT_FOUND'),
      typeError,
      warnings: [],
      last: 'NOT_FOUND',
    },
    warn: {
      pixstoreError: { value: null },
      typeError: { value: null },
      warnings: ['NOT_FOUND', expect.stringMatching(/^TypeError: getImage: record must be/)],
      last: 'NOT_FOUND',
    },
    silent: {
      pixstoreError: { value: null },
      typeError: { value: null },
      warnings: [],
      last: 'NOT_FOUND',
    },
    'custom-unset': { pixstoreError: notSet, typeError: notSet, warnings: [], last: 'NOT_FOUND' },
    custom: {
      pixstoreError: { value: null },
      typeError: { value: null },
      warnings: [],
      last: 'NOT_FOUND',
    },
  })
  expect(seen.handled).toEqual(['NOT_FOUND', 'TypeError'])
  expect(seen.lastIsPixstoreError).toBe(true)

  // A bad configuration throws whatever the mode (here silent).
  expect(seen.badConfig).toEqual({
    unknownKey: pixstoreError('INVALID_CONFIG'),
    wrongType: typeError,
    batchOverLimit: pixstoreError('INVALID_CONFIG'),
    badMode: pixstoreError('INVALID_CONFIG'),
    badFormat: pixstoreError('INVALID_CONFIG'),
    repeatedFormat: pixstoreError('INVALID_CONFIG'),
    badRoute: pixstoreError('INVALID_CONFIG'),
    badPort: pixstoreError('INVALID_CONFIG'),
    badFetcher: typeError,
  })
  expect(seen.badConfig.unknownKey.error.message).toMatch(
    /unknown configuration key "imageRootDir"/,
  )
  expect(seen.badIds).toEqual({
    deleteNumber: typeError,
    existsEmpty: pixstoreError('INVALID_ARGUMENT'),
    handler: typeError,
  })
  expect(seen.codes).toContain('INVALID_PROOF')
})

test('deleteCachedImage during a load keeps the image out of the cache', async () => {
  expect(await scenario('delete-during-load')).toEqual({
    deleted: false,
    same: true,
    cachedAfter: false,
    entries: 0,
  })
})

test('without IndexedDB, images still load, one request each', async () => {
  expect(await scenario('no-indexeddb')).toEqual({
    hasIndexedDB: false,
    same: true,
    requests: 2,
    exists: false,
    deleted: false,
  })
})

test('a damaged cache entry is dropped and the image fetched again', async () => {
  expect(await scenario('damaged-cache')).toEqual({ same: true, requests: 2 })
})

describe('types, as a browser TypeScript project sees them', () => {
  let project

  beforeAll(() => {
    project = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-frontend-ts-'))
    const source = path.join(__dirname, 'fixtures', 'frontend-ts')
    for (const name of fs.readdirSync(source)) {
      fs.copyFileSync(path.join(source, name), path.join(project, name))
    }
    fs.mkdirSync(path.join(project, 'node_modules'))
    fs.symlinkSync(REPO, path.join(project, 'node_modules', 'pixstore'), 'dir')
  })

  afterAll(() => fs.rmSync(project, { recursive: true, force: true }))

  test.each(['bundler', 'node16'])(
    'the consumer type-checks under moduleResolution %s, DOM library, no Node types',
    async (resolution) => {
      const tsc = path.join(REPO, 'node_modules', 'typescript', 'bin', 'tsc')
      const { code, stdout } = await runNode(
        tsc,
        ['-p', path.join(project, `tsconfig.${resolution}.json`), '--pretty', 'false'],
        { timeout: 120_000 },
      )
      expect({ code, stdout }).toEqual({ code: 0, stdout: '' })
    },
    120_000,
  )
})
