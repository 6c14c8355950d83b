'use strict'

// The default endpoint over HTTP, as the 3.x reference lists it: routes, status codes, headers
// and CORS on every response; bounded requests (huge headers, long ids, malformed percent-encoding,
// ids that climb out of the image root); a port already taken; the process not kept alive; and
// stopDefaultEndpoint / closePixstoreBackend finishing the responses in flight.

const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  getImageRecord,
  stopDefaultEndpoint,
} = require('pixstore/backend')
const { PixstoreError } = require('pixstore/shared')
const {
  asset,
  assetPath,
  freshStore,
  freePort,
  httpRequest,
  imagePath,
  encryptedFileOf,
  connectRefused,
  runNode,
  WIRE,
} = require('./helpers.js')

const SERVE_WITHOUT_CLOSE = path.join(__dirname, 'fixtures', 'serve-without-close.js')
const ALLOW_METHODS = 'GET,OPTIONS'
const ALLOW_HEADERS = 'Content-Type, Authorization, x-pixstore-proof, x-pixstore-token'

const store = freshStore()
const root = store.config.imageRootDir

/** Opens the store with the default endpoint on a port of its own; returns the port. */
async function startEndpoint(extra = {}) {
  const port = await freePort()
  initPixstoreBackend({
    ...store.config,
    defaultEndpointEnabled: true,
    defaultEndpointListenHost: '127.0.0.1',
    defaultEndpointListenPort: port,
    ...extra,
  })
  return port
}

function expectCors(res, origin = '*') {
  expect({
    origin: res.headers['access-control-allow-origin'],
    methods: res.headers['access-control-allow-methods'],
    headers: res.headers['access-control-allow-headers'],
  }).toEqual({ origin, methods: ALLOW_METHODS, headers: ALLOW_HEADERS })
}

/** Sends raw bytes on a new connection; resolves what came back before the server closed. */
function rawExchange(port, text) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    const chunks = []
    let error = null
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('error', (err) => (error = err.code))
    socket.on('close', () => {
      const response = Buffer.concat(chunks).toString('latin1')
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? NaN)
      resolve({ status, response, error })
    })
    socket.setTimeout(10_000, () => socket.destroy())
    socket.write(text)
  })
}

/** The Updated payload for a record: [1] + token + key + iv + tag + the file on disk. */
function updatedBytes(record) {
  const token = Buffer.alloc(8)
  token.writeBigUInt64LE(BigInt(record.token))
  const meta = ['key', 'iv', 'tag'].map((field) => Buffer.from(record.meta[field], 'base64'))
  const file = fs.readFileSync(encryptedFileOf(root, record.id))
  return Buffer.concat([Buffer.from([WIRE.Updated]), token, ...meta, file])
}

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
})

afterAll(async () => {
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

describe('routes, status codes and headers', () => {
  let port
  let record
  let inDir

  beforeAll(async () => {
    port = await startEndpoint()
    record = await saveImage(asset('1-pixel.png'))
    inDir = await saveImage(asset('1-pixel.webp'), 'endpoint tests')
    expect(inDir.id).toMatch(/^endpointtests:/)
  })

  test('GET <route>/<encodeURIComponent(id)>: 200, octet-stream, Content-Length, CORS', async () => {
    for (const saved of [record, inDir]) {
      const file = fs.readFileSync(encryptedFileOf(root, saved.id))
      const headers = { 'x-pixstore-proof': saved.statelessProof }

      const current = await httpRequest(port, imagePath(saved.id), {
        headers: { ...headers, 'x-pixstore-token': String(saved.token) },
      })
      expect(current.status).toBe(200)
      expect(current.headers['content-type']).toBe('application/octet-stream')
      expect(current.headers['content-length']).toBe(String(1 + file.length))
      // The payload depends on the proof and token headers: no cache may keep it.
      expect(current.headers['cache-control']).toBe('no-store')
      expect(current.body.length).toBe(1 + file.length)
      expect(current.body[0]).toBe(WIRE.Success)
      expectCors(current)

      const stale = await httpRequest(port, imagePath(saved.id), { headers })
      expect(stale.status).toBe(200)
      expect(stale.headers['content-type']).toBe('application/octet-stream')
      expect(stale.headers['content-length']).toBe(String(stale.body.length))
      expect(stale.headers['cache-control']).toBe('no-store')
      expect(stale.body.equals(updatedBytes(saved))).toBe(true)
      expectCors(stale)
    }
  })

  test('a query string does not change the id', async () => {
    const res = await httpRequest(port, `${imagePath(record.id)}?token=1&x=y`, {
      headers: { 'x-pixstore-proof': record.statelessProof, 'x-pixstore-token': record.token },
    })
    expect(res.status).toBe(200)
    expect(res.body[0]).toBe(WIRE.Success)
  })

  test.each(['/pixstore-image', '/pixstore-image/', '/pixstore-image?id=x'])(
    'GET %s: 400 "Missing image id" with CORS',
    async (url) => {
      const res = await httpRequest(port, url, {
        headers: { 'x-pixstore-proof': record.statelessProof },
      })
      expect(res.status).toBe(400)
      expect(res.body.toString()).toBe('Missing image id')
      expect(Number(res.headers['content-length'])).toBe(res.body.length)
      expectCors(res)
    },
  )

  test.each(['/', '/other', '/pixstore-images', '/pixstore-imagex/abc', '/x/pixstore-image/a'])(
    'GET %s: 404 with CORS',
    async (url) => {
      const res = await httpRequest(port, url)
      expect(res.status).toBe(404)
      expectCors(res)
    },
  )

  test.each(['POST', 'PUT', 'DELETE', 'PATCH'])(
    '%s on the image route: 404 with CORS',
    async (method) => {
      const res = await httpRequest(port, imagePath(record.id), {
        method,
        headers: { 'x-pixstore-proof': record.statelessProof },
      })
      expect(res.status).toBe(404)
      expectCors(res)
      // Nothing was changed.
      expect(getImageRecord(record.id).token).toBe(record.token)
    },
  )

  test.each(['/pixstore-image', '/pixstore-image/', imagePath('some:id')])(
    'OPTIONS %s: 204 with CORS and no body',
    async (url) => {
      const res = await httpRequest(port, url, {
        method: 'OPTIONS',
        headers: {
          Origin: 'https://app.example.com',
          'Access-Control-Request-Method': 'GET',
          'Access-Control-Request-Headers': 'x-pixstore-proof, x-pixstore-token',
        },
      })
      expect(res.status).toBe(204)
      expect(res.body.length).toBe(0)
      expectCors(res)
    },
  )
})

describe('a custom route and origin', () => {
  const ORIGIN = 'https://app.example.com'
  const ROUTE = '/api/v2/images'
  let port
  let record

  beforeAll(async () => {
    port = await startEndpoint({ defaultEndpointRoute: ROUTE, accessControlAllowOrigin: ORIGIN })
    record = await saveImage(asset('1-pixel.png'), 'custom')
  })

  test('the image is served under the custom route, with the custom origin', async () => {
    const res = await httpRequest(port, imagePath(record.id, ROUTE), {
      headers: { 'x-pixstore-proof': record.statelessProof, 'x-pixstore-token': record.token },
    })
    expect(res.status).toBe(200)
    expect(res.headers['content-type']).toBe('application/octet-stream')
    expect(res.body[0]).toBe(WIRE.Success)
    expectCors(res, ORIGIN)
  })

  test('every other response carries the custom origin too', async () => {
    const proof = { 'x-pixstore-proof': record.statelessProof }
    const cases = [
      ['GET', ROUTE, 400],
      ['GET', `${ROUTE}/`, 400],
      ['GET', imagePath(record.id), 404], // the default route is not served
      ['GET', '/api/v2', 404],
      ['POST', imagePath(record.id, ROUTE), 404],
      ['OPTIONS', imagePath(record.id, ROUTE), 204],
      ['GET', `${ROUTE}/${'a'.repeat(5000)}`, 414],
    ]
    for (const [method, url, status] of cases) {
      const res = await httpRequest(port, url, { method, headers: proof })
      expect({ method, url: url.slice(0, 40), status: res.status }).toEqual({
        method,
        url: url.slice(0, 40),
        status,
      })
      expectCors(res, ORIGIN)
    }
  })
})

describe('bounded requests', () => {
  let port
  let record
  let sentinel

  /** Whether the endpoint still answers a normal request correctly. */
  async function stillServes() {
    const res = await httpRequest(port, imagePath(record.id), {
      headers: { 'x-pixstore-proof': record.statelessProof, 'x-pixstore-token': record.token },
    })
    expect(res.status).toBe(200)
    expect(res.body[0]).toBe(WIRE.Success)
  }

  beforeAll(async () => {
    port = await startEndpoint()
    record = await saveImage(asset('1-pixel.png'))
    // Where ids that climb out of the image root would land.
    sentinel = path.join(store.dir, 'sentinel.pixstore-image')
    fs.writeFileSync(sentinel, 'sentinel bytes')
  })

  test('a 64 KB header is refused with 431, and the server serves afterwards', async () => {
    const res = await rawExchange(
      port,
      `GET ${imagePath(record.id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        `x-pixstore-proof: ${record.statelessProof}\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n` +
        'Connection: close\r\n\r\n',
    )
    expect(res.status).toBe(431)
    await stillServes()
  })

  test('a 5000-character id is 414 with CORS, and the server serves afterwards', async () => {
    const res = await httpRequest(port, `/pixstore-image/${'a'.repeat(5000)}`, {
      headers: { 'x-pixstore-proof': record.statelessProof },
    })
    expect(res.status).toBe(414)
    expectCors(res)
    await stillServes()
  })

  // %ZZ fails today: the endpoint decodes leniently (percent_decode_str keeps an invalid escape
  // as literal text), so it looks up the id "%ZZ" and answers 200 with a wire state, where
  // decodeURIComponent, which 3.x's route used, rejects the path as malformed.
  test.each(['%E0%A4%A', '%ZZ', '%C3%28'])(
    'malformed percent-encoding /pixstore-image/%s is 400, never a crash',
    async (encoded) => {
      const res = await httpRequest(port, `/pixstore-image/${encoded}`, {
        headers: { 'x-pixstore-proof': record.statelessProof },
      })
      await stillServes()
      expectCors(res)
      expect(res.status).toBe(400)
    },
  )

  test.each([
    '..%2F..%2Fetc%2Fpasswd',
    '..%2Fsentinel',
    '%2E%2E%2Fsentinel',
    '..%3Asentinel',
    '%00',
    'a%3Ab%3Ac',
    '..%5Csentinel',
  ])('id %s is a wire state, and nothing outside the image root is touched', async (encoded) => {
    const before = fs.statSync(sentinel)
    const withProof = await httpRequest(port, `/pixstore-image/${encoded}`, {
      headers: { 'x-pixstore-proof': record.statelessProof, 'x-pixstore-token': record.token },
    })
    const withoutProof = await httpRequest(port, `/pixstore-image/${encoded}`)
    expect([withProof.status, [...withProof.body]]).toEqual([200, [WIRE.InvalidProof]])
    expect([withoutProof.status, [...withoutProof.body]]).toEqual([200, [WIRE.MissingProof]])
    expect(fs.readFileSync(sentinel, 'utf8')).toBe('sentinel bytes')
    expect(fs.statSync(sentinel).mtimeMs).toBe(before.mtimeMs)
    await stillServes()
  })

  test('an unencoded ../ path is a wire state too', async () => {
    const res = await rawExchange(
      port,
      'GET /pixstore-image/../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n' +
        `x-pixstore-proof: ${record.statelessProof}\r\nConnection: close\r\n\r\n`,
    )
    expect(res.status).toBe(200)
    expect(res.response.endsWith(`\r\n\r\n${String.fromCharCode(WIRE.InvalidProof)}`)).toBe(true)
    expect(fs.readFileSync(sentinel, 'utf8')).toBe('sentinel bytes')
  })
})

describe('a port already taken', () => {
  test('initPixstoreBackend throws ENDPOINT_UNAVAILABLE naming host and port; no crash', async () => {
    const port = await freePort()
    // init first asks whoever listens which store it serves; this program answers nothing.
    const holder = net.createServer((socket) => socket.destroy())
    await new Promise((resolve) => holder.listen(port, '127.0.0.1', resolve))
    const uncaught = []
    const onUncaught = (err) => uncaught.push(err)
    process.on('uncaughtException', onUncaught)
    try {
      let err = null
      try {
        initPixstoreBackend({
          ...store.config,
          defaultEndpointEnabled: true,
          defaultEndpointListenHost: '127.0.0.1',
          defaultEndpointListenPort: port,
        })
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(PixstoreError)
      expect(err).toMatchObject({ name: 'PixstoreError', code: 'ENDPOINT_UNAVAILABLE' })
      expect(err.message).toContain(`127.0.0.1:${port}`)

      // The process is still here, and the holder still owns the port.
      await new Promise((resolve) => setTimeout(resolve, 200))
      expect(uncaught).toEqual([])
      expect(holder.listening).toBe(true)
    } finally {
      process.off('uncaughtException', onUncaught)
      await new Promise((resolve) => holder.close(resolve))
    }

    // A later init on a free port works.
    const next = await startEndpoint()
    const record = await saveImage(asset('1-pixel.png'))
    const res = await httpRequest(next, imagePath(record.id), {
      headers: { 'x-pixstore-proof': record.statelessProof },
    })
    expect([res.status, res.body[0]]).toEqual([200, WIRE.Updated])
  })
})

describe('the process lifetime', () => {
  test('a running endpoint does not keep the Node process alive', async () => {
    const child = freshStore()
    const port = await freePort()
    const config = {
      ...child.config,
      defaultEndpointEnabled: true,
      defaultEndpointListenHost: '127.0.0.1',
      defaultEndpointListenPort: port,
    }
    try {
      const run = await runNode(
        SERVE_WITHOUT_CLOSE,
        [JSON.stringify({ config, image: assetPath('1-pixel.png') })],
        { timeout: 15_000 },
      )
      expect({ timedOut: run.timedOut, code: run.code, stderr: run.stderr }).toEqual({
        timedOut: false,
        code: 0,
        stderr: '',
      })
      expect(JSON.parse(run.stdout)).toEqual({
        status: 200,
        state: WIRE.Updated,
        length: expect.any(Number),
      })
      expect(run.ms).toBeLessThan(10_000)
      expect(await connectRefused(port)).toBe(true)
    } finally {
      fs.rmSync(child.dir, { recursive: true, force: true })
    }
  })

  test('stopDefaultEndpoint completes a response in flight, then refuses connections', async () => {
    const port = await startEndpoint()
    const record = await saveImage(asset('antalya.jpg'))
    const expected = updatedBytes(record)
    expect(expected.length).toBeGreaterThan(1_300_000)

    let stopping = null
    let stopped = false
    const body = await new Promise((resolve, reject) => {
      const request = require('node:http').get(
        {
          host: '127.0.0.1',
          port,
          path: imagePath(record.id),
          headers: { 'x-pixstore-proof': record.statelessProof },
          agent: false,
        },
        (res) => {
          // Headers are in, the body is not: stop now, and read slowly.
          res.pause()
          stopping = stopDefaultEndpoint().then(() => (stopped = true))
          setTimeout(() => res.resume(), 300)
          const chunks = []
          res.on('data', (chunk) => chunks.push(chunk))
          res.on('end', () => resolve(Buffer.concat(chunks)))
          res.on('error', reject)
        },
      )
      request.on('error', reject)
    })
    expect(body.length).toBe(expected.length)
    expect(body.equals(expected)).toBe(true)
    await stopping
    expect(stopped).toBe(true)
    expect(await connectRefused(port)).toBe(true)
  })

  test('stopDefaultEndpoint does not wait for an idle keep-alive connection', async () => {
    const port = await startEndpoint()
    const record = await saveImage(asset('1-pixel.png'))
    const socket = net.connect(port, '127.0.0.1')
    const closed = new Promise((resolve) => socket.on('close', resolve))
    socket.on('error', () => {})
    const firstResponse = new Promise((resolve) => socket.once('data', resolve))
    socket.write(
      `GET ${imagePath(record.id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        `x-pixstore-proof: ${record.statelessProof}\r\nConnection: keep-alive\r\n\r\n`,
    )
    expect((await firstResponse).toString('latin1')).toMatch(/^HTTP\/1\.1 200 /)

    let timer
    const timeout = new Promise((resolve) => (timer = setTimeout(resolve, 5000, 'timed out')))
    try {
      expect(await Promise.race([stopDefaultEndpoint().then(() => 'stopped'), timeout])).toBe(
        'stopped',
      )
      expect(await Promise.race([closed.then(() => 'closed'), timeout])).toBe('closed')
    } finally {
      clearTimeout(timer)
      socket.destroy()
    }
    expect(await connectRefused(port)).toBe(true)
  })

  // Found while writing this suite: the graceful shutdown has no deadline, so one client that
  // stops reading holds stopDefaultEndpoint (and closePixstoreBackend, and a SIGTERM handler
  // awaiting it) until that client goes away. The 10 s bound is this suite's choice.
  test('a client that stops reading does not hold stopDefaultEndpoint forever', async () => {
    const port = await startEndpoint()
    const record = await saveImage(asset('antalya.jpg'))
    const socket = net.connect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.pause()
    const request =
      `GET ${imagePath(record.id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
      `x-pixstore-proof: ${record.statelessProof}\r\n\r\n`
    // 20 pipelined 1.3 MB responses: more than the socket buffers hold, so the server blocks.
    socket.write(request.repeat(20))
    await new Promise((resolve) => setTimeout(resolve, 1000))

    const started = Date.now()
    const stopping = stopDefaultEndpoint()
    let timer
    const timeout = new Promise((resolve) => (timer = setTimeout(resolve, 10_000, 'still waiting')))
    try {
      expect(await Promise.race([stopping.then(() => 'stopped'), timeout])).toBe('stopped')
      expect(Date.now() - started).toBeLessThan(10_000)
    } finally {
      clearTimeout(timer)
      socket.destroy()
      await stopping
    }
    expect(await connectRefused(port)).toBe(true)
  })

  test('closePixstoreBackend stops the endpoint too', async () => {
    const port = await startEndpoint()
    const record = await saveImage(asset('1-pixel.png'))
    const res = await httpRequest(port, imagePath(record.id), {
      headers: { 'x-pixstore-proof': record.statelessProof },
    })
    expect(res.status).toBe(200)
    await closePixstoreBackend()
    expect(await connectRefused(port)).toBe(true)
  })
})
