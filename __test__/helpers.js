'use strict'

// Shared by the suites: a fresh store folder per test file, and the real assets.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const ASSETS = path.join(__dirname, '..', 'assets')

/** The bytes of a file in `assets/`. */
function asset(name) {
  return fs.readFileSync(path.join(ASSETS, name))
}

function assetPath(name) {
  return path.join(ASSETS, name)
}

/** A new empty folder, with the config that puts a store inside it. */
function freshStore(extra = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-test-'))
  return {
    dir,
    config: {
      imageRootDir: path.join(dir, 'images'),
      databasePath: path.join(dir, 'store.sqlite'),
      defaultEndpointEnabled: false,
      errorHandlingMode: 'throw',
      ...extra,
    },
  }
}

/** Every encrypted file under an image root, relative to it, sorted. */
function encryptedFiles(root) {
  if (!fs.existsSync(root)) return []
  return fs
    .readdirSync(root, { recursive: true })
    .filter((name) => name.endsWith('.pixstore-image'))
    .sort()
}

module.exports = { ASSETS, asset, assetPath, freshStore, encryptedFiles }

// For the suites that talk to the default endpoint over HTTP, often from a child process.

const crypto = require('node:crypto')
const http = require('node:http')
const net = require('node:net')

/** A TCP port that the OS found free a moment ago. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** One HTTP request to 127.0.0.1 on a new connection; resolves `{ status, headers, body }`. */
function httpRequest(port, path, { method = 'GET', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path, method, headers, agent: false },
      (res) => {
        const chunks = []
        res.on('data', (chunk) => chunks.push(chunk))
        res.on('error', reject)
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }),
        )
      },
    )
    req.setTimeout(15_000, () => req.destroy(new Error(`${method} ${path} timed out`)))
    req.on('error', reject)
    req.end()
  })
}

/** The request path of the default endpoint for an id. */
const imagePath = (id, route = '/pixstore-image') => `${route}/${encodeURIComponent(id)}`

/**
 * The original image in a Success (with the record's meta) or Updated (with its own meta)
 * payload: `{ state, token, format, image }`; `{ state }` for the bare states.
 */
function openPayload(payload, recordMeta) {
  const state = payload[0]
  if (state !== 0 && state !== 1) return { state, length: payload.length }
  let token = null
  let meta = recordMeta
  let ciphertext = payload.subarray(1)
  if (state === 1) {
    token = Number(payload.readBigUInt64LE(1))
    meta = {
      key: payload.subarray(9, 41),
      iv: payload.subarray(41, 53),
      tag: payload.subarray(53, 69),
    }
    ciphertext = payload.subarray(69)
  }
  const raw = (value) => (typeof value === 'string' ? Buffer.from(value, 'base64') : value)
  const decipher = crypto.createDecipheriv('aes-256-gcm', raw(meta.key), raw(meta.iv))
  decipher.setAuthTag(raw(meta.tag))
  const plaintext = Buffer.concat([decipher.update(ciphertext), decipher.final()])
  return { state, token, format: plaintext[0], image: plaintext.subarray(1) }
}

/**
 * The JSON lines a child prints on stdout, as messages with a `type`; `next(type)` waits for the
 * next one of that type. Lines that are not JSON are kept in `other`.
 */
class JsonLines {
  constructor(stream) {
    this.queues = new Map()
    this.waiters = new Map()
    this.other = []
    this.closed = false
    let rest = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk) => {
      const lines = (rest + chunk).split('\n')
      rest = lines.pop()
      for (const line of lines) this.take(line)
    })
    stream.on('end', () => {
      this.closed = true
      for (const waiters of this.waiters.values()) {
        for (const waiter of waiters) waiter.reject(new Error('the child closed its stdout'))
      }
      this.waiters.clear()
    })
  }

  take(line) {
    let message
    try {
      message = JSON.parse(line)
    } catch {
      this.other.push(line)
      return
    }
    const waiters = this.waiters.get(message.type)
    if (waiters?.length) waiters.shift().resolve(message)
    else this.queue(message.type).push(message)
    if (this.onMessage) this.onMessage(message)
  }

  queue(type) {
    if (!this.queues.has(type)) this.queues.set(type, [])
    return this.queues.get(type)
  }

  next(type, timeoutMs = 20_000) {
    const queued = this.queue(type)
    if (queued.length > 0) return Promise.resolve(queued.shift())
    if (this.closed) return Promise.reject(new Error(`the child closed before a ${type} message`))
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const waiters = this.waiters.get(type)
        waiters.splice(waiters.indexOf(waiter), 1)
        reject(new Error(`no ${type} message within ${timeoutMs} ms`))
      }, timeoutMs)
      const waiter = {
        resolve: (message) => {
          clearTimeout(timer)
          resolve(message)
        },
        reject: (err) => {
          clearTimeout(timer)
          reject(err)
        },
      }
      if (!this.waiters.has(type)) this.waiters.set(type, [])
      this.waiters.get(type).push(waiter)
    })
  }
}

Object.assign(module.exports, { freePort, httpRequest, imagePath, openPayload, JsonLines })

// For the wire, endpoint, proof and interop suites.

/** The wire states, by name. */
const WIRE = Object.freeze({
  Success: 0,
  Updated: 1,
  NotFound: 2,
  MissingID: 3,
  MissingProof: 4,
  InvalidProof: 5,
  InternalError: 6,
})

/** Whether a TCP connect to 127.0.0.1:port is refused (`true`) or accepted (`false`). */
function connectRefused(port) {
  return new Promise((resolve, reject) => {
    const socket = require('node:net').connect(port, '127.0.0.1')
    socket.on('connect', () => {
      socket.destroy()
      resolve(false)
    })
    socket.on('error', (err) => (err.code === 'ECONNREFUSED' ? resolve(true) : reject(err)))
  })
}

/** The one encrypted file of an id under an image root, as an absolute path. */
function encryptedFileOf(root, id) {
  const colon = id.indexOf(':')
  const folder = colon === -1 ? root : path.join(root, id.slice(0, colon))
  const key = colon === -1 ? id : id.slice(colon + 1)
  const files = fs
    .readdirSync(folder)
    .filter((name) => name.startsWith(`${key}.`) && name.endsWith('.pixstore-image'))
  if (files.length !== 1) throw new Error(`expected one file for ${id}, found ${files.length}`)
  return path.join(folder, files[0])
}

/**
 * Runs `node script ...args` from the repository root and kills it after `timeout` ms. Resolves
 * `{ code, signal, stdout, stderr, ms, timedOut }`.
 */
function runNode(script, args = [], { timeout = 20_000 } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const child = require('node:child_process').spawn(process.execPath, [script, ...args], {
      cwd: path.join(__dirname, '..'),
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let timedOut = false
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeout)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started, timedOut })
    })
  })
}

Object.assign(module.exports, { WIRE, connectRefused, encryptedFileOf, runNode })
