'use strict'

// Node's cluster module: a primary (a child process of this test) forks two workers that open
// the same store, each with the default endpoint on the same port (SO_REUSEPORT), and each saves
// an image. Each worker must serve either image with the proof the other worker issued, both
// together and alone; killing one worker must not interrupt serving; disconnected workers close
// the store and end on their own; and the store holds both images intact afterwards.

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  getImageRecord,
  readImage,
} = require('pixstore/backend')
const {
  asset,
  freshStore,
  freePort,
  httpRequest,
  imagePath,
  openPayload,
  JsonLines,
} = require('./helpers.js')

const PRIMARY = path.join(__dirname, 'fixtures', 'cluster-primary.js')
/** Requests per image and phase, each on a new connection, this many at a time. */
const REQUESTS = 40
const PARALLEL = 8
/** What each worker saves (see cluster-worker.js), and its format byte. */
const IMAGES = {
  1: { bytes: asset('vilnius-800.png'), format: 1 },
  2: { bytes: asset('vilnius-800.webp'), format: 2 },
}

let store
let port
let primary
let lines
let stderr = ''
let workers // index -> { pid, record }

/** The next message of `type` from the primary; rejects at once on a `failed` message. */
function expectMessage(type, timeoutMs = 20_000) {
  return Promise.race([
    lines.next(type, timeoutMs),
    lines.next('failed', timeoutMs + 1000).then((failed) => {
      throw new Error(`cluster failure: ${JSON.stringify(failed)}\nstderr: ${stderr}`)
    }),
  ])
}

function send(command) {
  primary.stdin.write(`${JSON.stringify(command)}\n`)
}

/** Tells worker `index` to run `cmd` and waits for its acknowledgement. */
async function workerCommand(index, cmd) {
  send({ cmd, worker: index })
  const ack = await expectMessage('ack')
  expect(ack).toEqual(expect.objectContaining({ index, cmd, ok: true }))
}

const isAlive = (pid) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Which of `pids` hold a listening TCP socket on `port` (Linux: /proc/net/tcp and the processes'
 * file descriptors).
 */
function listeningOn(port, pids) {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')}`
  const inodes = new Set()
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(table)) continue
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields.length > 9 && fields[1].endsWith(hexPort) && fields[3] === '0A') {
        inodes.add(fields[9])
      }
    }
  }
  return pids.filter((pid) => {
    const fdDir = `/proc/${pid}/fd`
    return fs.readdirSync(fdDir).some((fd) => {
      try {
        const target = fs.readlinkSync(path.join(fdDir, fd))
        return inodes.has(target.match(/^socket:\[(\d+)\]$/)?.[1])
      } catch {
        return false // closed meanwhile
      }
    })
  })
}

const workerPids = () => [...workers.values()].map((w) => w.pid)

/**
 * Fetches each worker's image REQUESTS times from the shared port, with its record's proof:
 * every other request with the record's token (Success expected), the others without (Updated).
 * Returns the problems found, one line each.
 */
async function fetchBothImages() {
  const jobs = []
  for (const [index, { record }] of workers) {
    for (let n = 0; n < REQUESTS; n++) jobs.push({ index, record, withToken: n % 2 === 0 })
  }
  const problems = []
  const check = async ({ index, record, withToken }) => {
    const headers = { 'x-pixstore-proof': record.statelessProof }
    if (withToken) headers['x-pixstore-token'] = String(record.token)
    const label = `image of worker ${index} ${withToken ? 'with' : 'without'} token`
    let response
    try {
      response = await httpRequest(port, imagePath(record.id), { headers })
    } catch (err) {
      problems.push(`${label}: ${err.code ?? ''} ${err.message}`)
      return
    }
    const { status, headers: got, body } = response
    if (status !== 200 || got['content-type'] !== 'application/octet-stream') {
      problems.push(`${label}: status ${status}, ${got['content-type']}, body ${body.slice(0, 40)}`)
      return
    }
    if (Number(got['content-length']) !== body.length) {
      problems.push(`${label}: content-length ${got['content-length']}, body ${body.length}`)
    }
    const expectedState = withToken ? 0 : 1
    if (body[0] !== expectedState) {
      problems.push(`${label}: state ${body[0]} (${body.length} bytes), expected ${expectedState}`)
      return
    }
    try {
      const opened = openPayload(body, record.meta)
      if (!withToken && opened.token !== record.token) {
        problems.push(`${label}: token ${opened.token}, expected ${record.token}`)
      }
      if (opened.format !== IMAGES[index].format) {
        problems.push(`${label}: format byte ${opened.format}`)
      }
      if (!opened.image.equals(IMAGES[index].bytes)) {
        problems.push(`${label}: ${opened.image.length} bytes differ from the original`)
      }
    } catch (err) {
      problems.push(`${label}: does not decrypt: ${err.message}`)
    }
  }
  for (let i = 0; i < jobs.length; i += PARALLEL) {
    await Promise.all(jobs.slice(i, i + PARALLEL).map(check))
  }
  return problems
}

beforeAll(async () => {
  await closePixstoreBackend()
  port = await freePort()
  store = freshStore({
    defaultEndpointEnabled: true,
    defaultEndpointListenHost: '127.0.0.1',
    defaultEndpointListenPort: port,
    // Long enough that no proof expires during the run, however slow the machine.
    statelessKeyWindowLength: 600_000,
  })
  primary = spawn(process.execPath, [PRIMARY, JSON.stringify({ config: store.config })], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  primary.stderr.setEncoding('utf8')
  primary.stderr.on('data', (chunk) => {
    stderr += chunk
  })
  lines = new JsonLines(primary.stdout)
})

afterAll(async () => {
  const pids = workers ? [...workers.values()].map((w) => w.pid) : []
  for (const pid of pids) if (isAlive(pid)) process.kill(pid, 'SIGKILL')
  if (primary.exitCode === null && primary.signalCode === null) primary.kill('SIGKILL')
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

test('two workers open one store, both listening on the same port, and save an image each', async () => {
  const ready = await expectMessage('ready')
  workers = new Map(ready.workers.map((w) => [w.index, { pid: w.pid, record: w.record }]))

  expect([...workers.keys()].sort()).toEqual([1, 2])
  for (const { pid, record } of workers.values()) {
    expect(isAlive(pid)).toBe(true)
    expect(record).toEqual({
      id: expect.any(String),
      token: expect.any(Number),
      meta: { key: expect.any(String), iv: expect.any(String), tag: expect.any(String) },
      statelessProof: expect.any(String),
    })
  }
  expect(workers.get(1).record.id).not.toBe(workers.get(2).record.id)
  expect(listeningOn(port, workerPids())).toEqual(workerPids())
}, 30_000)

test('with both workers listening, every request gets the right image', async () => {
  expect(await fetchBothImages()).toEqual([])
}, 30_000)

test("worker 1 alone serves worker 2's image, with the proof worker 2 issued", async () => {
  await workerCommand(2, 'stop-endpoint')
  expect(listeningOn(port, workerPids())).toEqual([workers.get(1).pid])
  expect(await fetchBothImages()).toEqual([])
}, 30_000)

test("once worker 1 is killed, worker 2 alone serves worker 1's image", async () => {
  // Worker 2 opens the store again, endpoint included, and worker 1 dies.
  await workerCommand(2, 'reinit')
  expect(listeningOn(port, workerPids())).toEqual(workerPids())
  send({ cmd: 'kill', worker: 1 })
  const killed = await expectMessage('killed')
  expect(killed).toEqual(expect.objectContaining({ index: 1, signal: 'SIGKILL' }))
  expect(isAlive(workers.get(1).pid)).toBe(false)
  expect(isAlive(workers.get(2).pid)).toBe(true)
  expect(listeningOn(port, [workers.get(2).pid])).toEqual([workers.get(2).pid])

  expect(await fetchBothImages()).toEqual([])
}, 30_000)

test('disconnected, the remaining worker closes the store and ends on its own', async () => {
  send({ cmd: 'shutdown' })
  const { exits } = await expectMessage('shutdown')
  expect(exits).toEqual({ 2: { code: 0, signal: null, exitedAfterDisconnect: true } })

  const exited = await new Promise((resolve) => {
    if (primary.exitCode !== null) resolve({ code: primary.exitCode })
    else primary.on('exit', (code, signal) => resolve({ code, signal }))
  })
  expect(exited.code).toBe(0)
  expect(isAlive(workers.get(2).pid)).toBe(false)
  // The endpoint went with the workers.
  await expect(httpRequest(port, '/pixstore-image')).rejects.toThrow(/ECONNREFUSED/)
  expect(stderr).toBe('')
}, 30_000)

test('the store holds both images intact afterwards', async () => {
  initPixstoreBackend({ ...store.config, defaultEndpointEnabled: false })
  for (const [index, { record }] of workers) {
    expect(getImageRecord(record.id)).toEqual(
      expect.objectContaining({ id: record.id, token: record.token, meta: record.meta }),
    )
    expect((await readImage(record.id)).equals(IMAGES[index].bytes)).toBe(true)
  }
  await closePixstoreBackend()
}, 30_000)
