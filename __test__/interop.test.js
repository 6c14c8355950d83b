'use strict'

// pixstore 3.2.1's real browser module, as a black box in a child process
// (fixtures/interop-frontend.mjs: fake-indexeddb, WebCrypto), against this store: served by our
// default endpoint, and by an Express app whose route calls customEndpointHelper, reached with
// the 3.x default fetcher or a custom one. getImage must give back the original bytes, serve a
// repeat from its IndexedDB cache without a request, follow an update, and turn a stale record
// (old token and meta) into the new image through the Updated payload.

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const express = require('express')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  updateImage,
  getImageRecord,
  customEndpointHelper,
} = require('pixstore/backend')
const { asset, freshStore, freePort, imagePath, JsonLines, WIRE } = require('./helpers.js')

const FRONTEND = path.join(__dirname, 'fixtures', 'interop-frontend.mjs')

// The images, and the Blob type 3.x gives each (it names JPEG `jpg`).
const IMAGES = [
  ['vilnius-800.png', 'image/png', undefined],
  ['vilnius-800.webp', 'image/webp', 'interop'],
  ['vilnius.jpg', 'image/jpg', 'Interop Photos'],
  ['antalya.jpg', 'image/jpg', undefined],
]

const store = freshStore()
const children = new Set()
let originals // [{ name, type, record }]

/**
 * Starts a 3.x frontend in a new process, with an empty IndexedDB. `get(record)` runs its
 * getImage and resolves `{ ok, blobType, bytes, requests, error }`.
 */
async function startFrontend(options) {
  const child = spawn(process.execPath, [FRONTEND, JSON.stringify(options)], {
    cwd: path.join(__dirname, '..'),
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  children.add(child)
  let stderr = ''
  child.stderr.on('data', (chunk) => (stderr += chunk))
  child.on('exit', () => children.delete(child))
  const lines = new JsonLines(child.stdout)
  await lines.next('ready', 15_000).catch((err) => {
    throw new Error(`${err.message}; stderr: ${stderr}`)
  })

  return {
    async get(record) {
      child.stdin.write(`${JSON.stringify({ op: 'getImage', record })}\n`)
      const result = await lines.next('result', 20_000)
      return { ...result, bytes: result.ok ? Buffer.from(result.base64, 'base64') : null }
    },
    stderr: () => stderr,
    stop() {
      child.stdin.end()
      return new Promise((resolve) =>
        child.exitCode !== null ? resolve() : child.on('exit', resolve),
      )
    },
  }
}

/** A record as the app would hand it out now: fresh proof, same token and meta. */
function current(record) {
  const now = getImageRecord(record.id)
  expect(now).toMatchObject({ id: record.id, token: record.token, meta: record.meta })
  return now
}

/** A record with a proof issued now, but the token and meta it had when saved (stale). */
function staleCopy(record) {
  return { ...record, statelessProof: getImageRecord(record.id).statelessProof }
}

/** Checks one getImage result against the image bytes and Blob type it must give. */
function expectImage(result, name, type) {
  expect({ ok: result.ok, error: result.error, blobType: result.blobType }).toEqual({
    ok: true,
    error: undefined,
    blobType: type,
  })
  const original = asset(name)
  expect({ name, length: result.bytes.length, same: result.bytes.equals(original) }).toEqual({
    name,
    length: original.length,
    same: true,
  })
}

/**
 * The scenario every server runs: each original image byte for byte, a repeat served from the
 * cache, an update followed, and a stale record turned into the new image in a fresh IndexedDB.
 * `expectRequest(request, record)` checks how a request went out; `served()` counts requests the
 * server saw, when it can.
 */
async function scenario(frontendOptions, { expectRequest = () => {}, served = null } = {}) {
  const before = served?.()
  const frontend = await startFrontend(frontendOptions)
  const fresh = await startFrontend(frontendOptions)
  try {
    let requests = 0

    // Every image, byte for byte; the client's token is current, so Success.
    for (const { name, type, record } of originals) {
      const handedOut = current(record)
      const result = await frontend.get(handedOut)
      expectImage(result, name, type)
      expect(result.requests.map((r) => [r.status, r.state])).toEqual([[200, WIRE.Success]])
      expectRequest(result.requests[0], handedOut)
      requests += 1
    }

    // Again: from the IndexedDB cache, no request.
    for (const { name, type, record } of originals) {
      const result = await frontend.get(current(record))
      expectImage(result, name, type)
      expect(result.requests).toEqual([])
    }

    // An update: the new record fetches the new image once, then it is cached.
    const old = await saveImage(asset('vilnius-800.webp'), 'interop')
    expectImage(await frontend.get(current(old)), 'vilnius-800.webp', 'image/webp')
    requests += 1
    const updated = await updateImage(old.id, asset('antalya.jpg'))
    expect(updated.token).not.toBe(old.token)
    const afterUpdate = await frontend.get(current(updated))
    expectImage(afterUpdate, 'antalya.jpg', 'image/jpg')
    expect(afterUpdate.requests.map((r) => [r.status, r.state])).toEqual([[200, WIRE.Success]])
    expectRequest(afterUpdate.requests[0], current(updated))
    requests += 1
    const repeat = await frontend.get(current(updated))
    expectImage(repeat, 'antalya.jpg', 'image/jpg')
    expect(repeat.requests).toEqual([])

    // The stale record, in a fresh IndexedDB: old token and meta, so the server answers Updated
    // and 3.x decrypts with the payload's own meta: the NEW image.
    const stale = await fresh.get(staleCopy(old))
    expectImage(stale, 'antalya.jpg', 'image/jpg')
    expect(stale.requests.map((r) => [r.status, r.state])).toEqual([[200, WIRE.Updated]])
    expect(stale.requests[0].length).toBe(
      1 + 8 + 32 + 12 + 16 + (afterUpdate.requests[0].length - 1),
    )
    requests += 1
    // The Updated payload carried the new token: the current record is now a cache hit there.
    const cached = await fresh.get(current(updated))
    expectImage(cached, 'antalya.jpg', 'image/jpg')
    expect(cached.requests).toEqual([])

    // The same stale record in the first frontend, whose cache holds the new token: Updated too.
    const staleThere = await frontend.get(staleCopy(old))
    expectImage(staleThere, 'antalya.jpg', 'image/jpg')
    expect(staleThere.requests.map((r) => r.state)).toEqual([WIRE.Updated])
    requests += 1

    if (served) expect(served() - before).toBe(requests)
    expect(frontend.stderr() + fresh.stderr()).toBe('')
  } finally {
    await Promise.all([frontend.stop(), fresh.stop()])
  }
}

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
  initPixstoreBackend(store.config)
  originals = []
  for (const [name, type, dir] of IMAGES) {
    originals.push({ name, type, record: await saveImage(asset(name), dir) })
  }
})

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL')
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

describe('our default endpoint', () => {
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

  test('the 3.x default fetcher: every format byte for byte, cache, update, stale record', async () => {
    await scenario(
      {
        frontendConfig: {
          defaultEndpointConnectHost: '127.0.0.1',
          defaultEndpointConnectPort: port,
        },
      },
      {
        expectRequest(request, record) {
          expect(request).toMatchObject({
            method: 'GET',
            url: `http://127.0.0.1:${port}${imagePath(record.id)}`,
            proof: record.statelessProof,
            token: String(record.token),
          })
        },
      },
    )
  })

  test('a custom route on both sides', async () => {
    const routePort = await freePort()
    const route = '/assets/img'
    initPixstoreBackend({
      ...store.config,
      defaultEndpointEnabled: true,
      defaultEndpointListenHost: '127.0.0.1',
      defaultEndpointListenPort: routePort,
      defaultEndpointRoute: route,
    })
    const frontend = await startFrontend({
      frontendConfig: {
        defaultEndpointConnectHost: '127.0.0.1',
        defaultEndpointConnectPort: routePort,
        defaultEndpointRoute: route,
      },
    })
    try {
      for (const { name, type, record } of originals.slice(0, 3)) {
        const handedOut = current(record)
        const result = await frontend.get(handedOut)
        expectImage(result, name, type)
        expect(result.requests.map((r) => r.url)).toEqual([
          `http://127.0.0.1:${routePort}${route}/${encodeURIComponent(record.id)}`,
        ])
      }
    } finally {
      await frontend.stop()
    }
  })
})

describe('an Express route with customEndpointHelper', () => {
  const ROUTE = '/px'
  let server
  let port
  const seen = []

  beforeAll(async () => {
    initPixstoreBackend(store.config) // default endpoint off
    const app = express()
    app.get(`${ROUTE}/:id`, async (req, res, next) => {
      try {
        const token =
          req.query.token !== undefined ? Number(req.query.token) : req.get('x-pixstore-token')
        const payload = await customEndpointHelper(
          req.params.id,
          token,
          req.get('x-pixstore-proof'),
        )
        seen.push({ id: req.params.id, state: payload[0] })
        res.type('application/octet-stream').send(Buffer.from(payload))
      } catch (err) {
        next(err)
      }
    })
    port = await freePort()
    server = await new Promise((resolve) => {
      const listening = app.listen(port, '127.0.0.1', () => resolve(listening))
    })
  })

  afterAll(() => new Promise((resolve) => server.close(resolve)))

  test('the 3.x default fetcher pointed at it (token in x-pixstore-token)', async () => {
    await scenario(
      {
        frontendConfig: {
          defaultEndpointConnectHost: '127.0.0.1',
          defaultEndpointConnectPort: port,
          defaultEndpointRoute: ROUTE,
        },
      },
      {
        served: () => seen.length,
        expectRequest(request, record) {
          expect(request).toMatchObject({
            url: `http://127.0.0.1:${port}${ROUTE}/${encodeURIComponent(record.id)}`,
            proof: record.statelessProof,
            token: String(record.token),
          })
          expect(seen.at(-1)).toEqual({ id: record.id, state: WIRE.Success })
        },
      },
    )
  })

  test('a counting custom fetcher (token in the query string)', async () => {
    await scenario(
      { customFetcherBase: `http://127.0.0.1:${port}${ROUTE}` },
      {
        served: () => seen.length,
        expectRequest(request, record) {
          expect(request).toMatchObject({
            url: `http://127.0.0.1:${port}${ROUTE}/${encodeURIComponent(record.id)}?token=${record.token}`,
            proof: record.statelessProof,
            token: null,
          })
          expect(seen.at(-1)).toEqual({ id: record.id, state: WIRE.Success })
        },
      },
    )
  })

  test('states other than Success/Updated reach 3.x as a PixstoreError', async () => {
    const frontend = await startFrontend({ customFetcherBase: `http://127.0.0.1:${port}${ROUTE}` })
    try {
      const { record } = originals[0]
      const result = await frontend.get({ ...current(record), statelessProof: 'not-a-proof' })
      expect(result.ok).toBe(false)
      expect(result.error).toMatch(/PixstoreError: .*InvalidProof/)
      expect(result.requests.map((r) => r.state)).toEqual([WIRE.InvalidProof])
    } finally {
      await frontend.stop()
    }
  })
})
