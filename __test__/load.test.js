'use strict'

// A load run on loopback: autocannon with 256 connections against the default endpoint of a
// server in a child process (fixtures/load-server.js), mixing valid requests for images up to
// the 1.3 MB photo with every kind of refused request. Every response must be the one its kind
// calls for (status, state byte, length), a sample taken alongside must decrypt to the original
// images, there must be no 5xx and no socket errors or timeouts, and the server must stay up,
// keep its resident memory bounded and end cleanly when told to close.
//
// PIXSTORE_LOAD_SECONDS sets the duration (default 5).

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const autocannon = require('autocannon')

const { closePixstoreBackend } = require('pixstore/backend')
const {
  asset,
  freshStore,
  freePort,
  httpRequest,
  imagePath,
  openPayload,
  JsonLines,
} = require('./helpers.js')

const SERVER = path.join(__dirname, 'fixtures', 'load-server.js')
const SECONDS = Number(process.env.PIXSTORE_LOAD_SECONDS || 5)
const CONNECTIONS = 256
const MB = 1024 * 1024
/**
 * Resident memory of the server during the run, at most. Seen on a 2-core machine: 47 MB idle,
 * a plateau of 110 to 135 MB and peaks up to 150 MB under this load (5 to 60 s runs).
 */
const MAX_RSS = 300 * MB
/** Growth of the mean resident memory from the first to the last quarter of the run, at most. */
const MAX_RSS_GROWTH = 48 * MB

/** The images served, with their format bytes under the default `imageFormats`. */
const VALID = {
  'antalya.jpg': 3,
  'vilnius-800.png': 1,
  'vilnius-800.webp': 2,
  'thumb-64.jpg': 3,
}
const BYTES = Object.fromEntries(Object.keys(VALID).map((name) => [name, asset(name)]))
/** Bytes an Updated payload carries before the ciphertext. */
const UPDATED_HEADER = 1 + 8 + 32 + 12 + 16

let store
let port
let server
let lines
let stderr = ''
let records
let deleted
const rss = [] // { t, rss } as the server reports it

/**
 * The request kinds of the run: what autocannon sends, and the outcome expected, as
 * `status:state byte:length` (`-` where there is no state byte or the length does not matter).
 */
function requestKinds() {
  const kinds = []
  for (const name of Object.keys(VALID)) {
    const { id, token, statelessProof } = records[name]
    const ciphertext = 1 + BYTES[name].length
    kinds.push({
      kind: `${name} with its token`,
      path: imagePath(id),
      headers: { 'x-pixstore-proof': statelessProof, 'x-pixstore-token': String(token) },
      expected: `200:0:${1 + ciphertext}`,
    })
    kinds.push({
      kind: `${name} without token`,
      path: imagePath(id),
      headers: { 'x-pixstore-proof': statelessProof },
      expected: `200:1:${UPDATED_HEADER + ciphertext}`,
    })
  }
  const webp = records['vilnius-800.webp']
  const png = records['vilnius-800.png']
  const webpLength = UPDATED_HEADER + 1 + BYTES['vilnius-800.webp'].length
  kinds.push(
    {
      kind: 'stale token',
      path: imagePath(webp.id),
      headers: { 'x-pixstore-proof': webp.statelessProof, 'x-pixstore-token': `${webp.token - 1}` },
      expected: `200:1:${webpLength}`,
    },
    {
      kind: 'proof of another image',
      path: imagePath(webp.id),
      headers: { 'x-pixstore-proof': png.statelessProof },
      expected: '200:5:1',
    },
    {
      kind: 'garbage proof',
      path: imagePath(webp.id),
      headers: { 'x-pixstore-proof': 'not-a-proof' },
      expected: '200:5:1',
    },
    { kind: 'missing proof', path: imagePath(webp.id), headers: {}, expected: '200:4:1' },
    {
      kind: 'deleted image',
      path: imagePath(deleted.id),
      headers: { 'x-pixstore-proof': deleted.statelessProof },
      expected: '200:2:1',
    },
    { kind: 'bad percent-encoding', path: '/pixstore-image/%E0%A4%A', expected: '400:-:-' },
    { kind: 'id too long', path: `/pixstore-image/${'a'.repeat(1100)}`, expected: '414:-:-' },
    { kind: 'POST', method: 'POST', path: imagePath(webp.id), expected: '404:-:-' },
    { kind: 'OPTIONS', method: 'OPTIONS', path: imagePath(webp.id), expected: '204:-:0' },
    { kind: 'no id', path: '/pixstore-image', expected: '400:-:-' },
    { kind: 'other path', path: '/elsewhere', expected: '404:-:-' },
  )
  return kinds
}

/**
 * autocannon keeps every response body as a string, built chunk by chunk: for megabyte payloads
 * that costs the client far more than the server's work (about 50 MB/s instead of several
 * hundred on loopback). Its clients keep only the first byte here, which is all `onResponse`
 * looks at; lengths are checked on Content-Length, which the parser holds the body to.
 */
function keepFirstByteOnly(client) {
  const queue = client.pipelinedRequests
  if (typeof queue?.addBody !== 'function' || typeof queue.peek !== 'function') {
    throw new Error('autocannon internals changed: no pipelinedRequests.addBody/peek to patch')
  }
  queue.addBody = function addFirstByte(data) {
    const request = this.peek()
    if (request && request.body === '' && data.length > 0)
      request.body = data.toString('latin1', 0, 1)
  }
}

/** How a response came out, in the form of `expected` of its kind. */
function outcome(status, body, headers, expected) {
  const [, state, length] = expected.split(':')
  const got = [status, state === '-' ? '-' : body.charCodeAt(0)]
  got.push(length === '-' ? '-' : Number(headers['content-length'] ?? 0))
  return got.join(':')
}

/**
 * While autocannon runs: fetches every valid image with and without its token over new
 * connections and decrypts it. Returns `{ checked, problems }` once `isDone()`.
 */
async function sampleWhileLoaded(isDone) {
  let checked = 0
  const problems = []
  while (!isDone()) {
    for (const name of Object.keys(VALID)) {
      const record = records[name]
      for (const withToken of [true, false]) {
        const headers = { 'x-pixstore-proof': record.statelessProof }
        if (withToken) headers['x-pixstore-token'] = String(record.token)
        const label = `sample ${name} ${withToken ? 'with' : 'without'} token`
        try {
          const { status, body } = await httpRequest(port, imagePath(record.id), { headers })
          const opened = openPayload(body, record.meta)
          const want = { status: 200, state: withToken ? 0 : 1, format: VALID[name], same: true }
          const got = {
            status,
            state: opened.state,
            format: opened.format,
            same: opened.image?.equals(BYTES[name]) ?? false,
          }
          if (JSON.stringify(got) !== JSON.stringify(want)) {
            problems.push(`${label}: ${JSON.stringify(got)}`)
          }
          checked++
        } catch (err) {
          problems.push(`${label}: ${err.code ?? ''} ${err.message}`)
        }
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return { checked, problems }
}

const mb = (bytes) => Math.round((bytes / MB) * 10) / 10
const mean = (values) => values.reduce((sum, v) => sum + v, 0) / values.length

beforeAll(async () => {
  await closePixstoreBackend()
  port = await freePort()
  store = freshStore({
    defaultEndpointEnabled: true,
    defaultEndpointListenHost: '127.0.0.1',
    defaultEndpointListenPort: port,
    // Long enough that no proof expires during a long run.
    statelessKeyWindowLength: 3_600_000,
  })
  server = spawn(
    process.execPath,
    [SERVER, JSON.stringify({ config: store.config, images: Object.keys(VALID) })],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  )
  server.stderr.setEncoding('utf8')
  server.stderr.on('data', (chunk) => {
    stderr += chunk
  })
  lines = new JsonLines(server.stdout)
  lines.onMessage = (message) => {
    if (message.type === 'rss') rss.push({ t: message.t, rss: message.rss })
  }
  const ready = await lines.next('records', 30_000).catch((err) => {
    throw new Error(`${err.message}; server stderr: ${stderr}`)
  })
  records = ready.records
  deleted = ready.deleted
}, 40_000)

afterAll(async () => {
  if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL')
  fs.rmSync(store.dir, { recursive: true, force: true })
})

test(
  `${CONNECTIONS} connections for ${SECONDS} s: every response as expected, memory bounded`,
  async () => {
    const kinds = requestKinds()
    const tally = new Map(kinds.map(({ kind }) => [kind, new Map()]))
    const requests = kinds.map(
      ({ kind, method = 'GET', path: requestPath, headers, expected }) => ({
        method,
        path: requestPath,
        headers: headers ?? {},
        onResponse: (status, body, context, responseHeaders) => {
          const got = outcome(status, body, responseHeaders, expected)
          const counts = tally.get(kind)
          counts.set(got, (counts.get(got) ?? 0) + 1)
        },
      }),
    )

    let done = false
    const sampling = sampleWhileLoaded(() => done)
    const started = Date.now()
    const result = await autocannon({
      url: `http://127.0.0.1:${port}`,
      connections: CONNECTIONS,
      duration: SECONDS,
      timeout: 10,
      setupClient: keepFirstByteOnly,
      requests,
    })
    const ended = Date.now()
    done = true
    const sample = await sampling
    // The server's resident memory a second after the run.
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const rssAfterRun = rss.at(-1)
    expect(rssAfterRun.t).toBeGreaterThan(ended + 500)

    // No crash, no server errors, no socket errors or timeouts.
    expect(server.exitCode).toBeNull()
    expect(stderr).toBe('')
    expect({
      errors: result.errors,
      timeouts: result.timeouts,
      mismatches: result.mismatches,
      '1xx': result['1xx'],
      '3xx': result['3xx'],
      '5xx': result['5xx'],
    }).toEqual({ errors: 0, timeouts: 0, mismatches: 0, '1xx': 0, '3xx': 0, '5xx': 0 })

    // Every response is the one its kind calls for, and every kind was answered.
    const wrong = []
    let answered = 0
    for (const { kind, expected } of kinds) {
      const counts = tally.get(kind)
      for (const [got, n] of counts) {
        answered += n
        if (got !== expected) wrong.push(`${kind}: ${n} × ${got}, expected ${expected}`)
      }
      if (!counts.has(expected)) wrong.push(`${kind}: never answered as expected`)
    }
    expect(wrong).toEqual([])
    expect(answered).toBe(result['2xx'] + result['4xx'])
    expect(answered).toBeGreaterThan(kinds.length * CONNECTIONS)

    // The sample taken alongside decrypts to the original images.
    expect(sample.problems).toEqual([])
    expect(sample.checked).toBeGreaterThan(0)

    // Resident memory: bounded, and not growing from the first to the last quarter of the run
    // (the run without its first fifth, in which the connections ramp up from idle).
    const during = rss.filter(({ t }) => t >= started && t <= ended)
    const steady = started + (ended - started) / 5
    const quarter = (ended - steady) / 4
    const first = during.filter(({ t }) => t >= steady && t < steady + quarter).map((s) => s.rss)
    const last = during.filter(({ t }) => t > ended - quarter).map((s) => s.rss)
    const figures = {
      seconds: Math.round((ended - started) / 100) / 10,
      requestsPerSecond: Math.round(answered / ((ended - started) / 1000)),
      autocannonAverageReqPerSec: result.requests.average,
      megabytesPerSecond: mb(result.throughput.average),
      latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
      sampled: sample.checked,
      rssMB: {
        beforeRun: mb(rss.filter(({ t }) => t < started).at(-1)?.rss ?? NaN),
        min: mb(Math.min(...during.map((s) => s.rss))),
        max: mb(Math.max(...during.map((s) => s.rss))),
        firstQuarter: { mean: mb(mean(first)), max: mb(Math.max(...first)) },
        lastQuarter: { mean: mb(mean(last)), max: mb(Math.max(...last)) },
        afterRun: mb(rssAfterRun.rss),
      },
    }
    console.log(`load run: ${JSON.stringify(figures, null, 2)}`)

    expect(during.length).toBeGreaterThanOrEqual(4)
    expect(first.length).toBeGreaterThan(0)
    expect(last.length).toBeGreaterThan(0)
    expect(Math.max(...during.map((s) => s.rss))).toBeLessThan(MAX_RSS)
    expect(mean(last) - mean(first)).toBeLessThan(MAX_RSS_GROWTH)
  },
  (SECONDS + 60) * 1000,
)

test('a malformed percent-encoding in the id is refused with 400, like invalid UTF-8', async () => {
  // decodeURIComponent (pixstore 3.x, browsers) rejects all of these. The endpoint answers 400
  // "Malformed image id" only to escapes that decode to invalid UTF-8 (the first three); a
  // malformed escape passes through percent_decode_str unchanged, the id "%ZZ" is looked up,
  // and the answer is 200 with state 5 (InvalidProof).
  const { statelessProof } = records['vilnius-800.webp']
  const answers = {}
  for (const encoded of ['%E0%A4%A', '%FF', '%C0%AF', '%ZZ', '%', '%4', 'abc%G1', 'abc%']) {
    const { status, body } = await httpRequest(port, `/pixstore-image/${encoded}`, {
      headers: { 'x-pixstore-proof': statelessProof },
    })
    answers[encoded] = status === 200 ? `200, state ${body[0]}` : `${status} ${body}`
  }
  const refused = '400 Malformed image id'
  expect(answers).toEqual({
    '%E0%A4%A': refused,
    '%FF': refused,
    '%C0%AF': refused,
    '%ZZ': refused,
    '%': refused,
    '%4': refused,
    'abc%G1': refused,
    'abc%': refused,
  })
})

test('the server is still up after the run, and ends with code 0 once told to close', async () => {
  expect(server.exitCode).toBeNull()
  const { body } = await httpRequest(port, imagePath(records['thumb-64.jpg'].id), {
    headers: { 'x-pixstore-proof': records['thumb-64.jpg'].statelessProof },
  })
  expect(openPayload(body).image.equals(BYTES['thumb-64.jpg'])).toBe(true)

  const exited = new Promise((resolve) =>
    server.on('exit', (code, signal) => resolve({ code, signal })),
  )
  server.stdin.write('close\n')
  await lines.next('closed', 10_000)
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve('still running 10 s after closing'), 10_000)
  })
  const ending = await Promise.race([exited, timeout])
  clearTimeout(timer)
  expect(ending).toEqual({ code: 0, signal: null })
  expect(stderr).toBe('')
}, 30_000)
