// pixstore/frontend: the browser side of Pixstore. It fetches an image's wire payload, decrypts
// it with WebCrypto and keeps the bytes, still encrypted, in IndexedDB, so that a record seen
// before is shown again without a request. Keys, IVs, tags and proofs stay in the records the
// app holds; the cache has only ciphertext.
//
// Only web platform APIs are used (fetch, crypto.subtle, indexedDB, Blob, atob), looked up when
// needed: the module runs in pages and workers, and in Node 18+ given an IndexedDB.

// Errors and error handling modes

/** Every code a `PixstoreError` of this module can carry. The README explains each. */
export const ERROR_CODES = Object.freeze([
  'INVALID_CONFIG',
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'MISSING_ID',
  'MISSING_PROOF',
  'INVALID_PROOF',
  'ENDPOINT_ERROR',
  'INTEGRITY_ERROR',
  'INVALID_IMAGE',
  'CRYPTO_UNAVAILABLE',
  'CACHE_ERROR',
])

export class PixstoreError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: string, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'PixstoreError'
    this.code = options.code ?? 'UNKNOWN'
  }
}

const MODES = ['hybrid', 'throw', 'warn', 'silent', 'custom']

let lastError = null
let customErrorHandler = null

/** Applies the error handling mode: returns `null` when the mode absorbs the error, else throws. */
function handleError(err) {
  const isPixstore = err instanceof PixstoreError
  switch (settings().errorHandlingMode) {
    case 'hybrid':
      if (!isPixstore) throw err
      console.warn(err)
      lastError = err
      return null
    case 'warn':
      console.warn(err)
      return null
    case 'silent':
      return null
    case 'custom':
      if (customErrorHandler === null) throw new Error('Custom error handler is not set')
      customErrorHandler(err)
      return null
    default:
      throw err
  }
}

async function guarded(work) {
  try {
    return await work()
  } catch (err) {
    return handleError(err)
  }
}

/** The most recent `PixstoreError` handled in `hybrid` mode, or `null`. */
export function getLastPixstoreError() {
  return lastError
}

/** Sets the function that receives every failure in `custom` mode. */
export function setCustomErrorHandler(handler) {
  try {
    if (typeof handler !== 'function') {
      throw argumentTypeError(
        'setCustomErrorHandler',
        'handler',
        'a function (err) => void',
        handler,
      )
    }
    customErrorHandler = handler
  } catch (err) {
    handleError(err)
  }
}

/** Describes a received value for a message without showing its content. */
function describe(value) {
  if (value === null) return 'null'
  if (value === undefined) return 'undefined'
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name} of ${value.byteLength} bytes`
  if (value instanceof ArrayBuffer) return `an ArrayBuffer of ${value.byteLength} bytes`
  if (Array.isArray(value)) return `an array of ${value.length} items`
  switch (typeof value) {
    case 'string':
      return `the string ${JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)}`
    case 'number':
    case 'bigint':
    case 'boolean':
      return `the ${typeof value} ${String(value)}`
    case 'function':
      return 'a function'
    case 'symbol':
      return 'a symbol'
    default:
      return `an object (${Object.prototype.toString.call(value).slice(8, -1)})`
  }
}

function argumentTypeError(fn, name, expected, value) {
  return new TypeError(`${fn}: ${name} must be ${expected}, received ${describe(value)}`)
}

// Configuration

/** MIME type of each format name the backend knows. */
const MIME_TYPES = Object.freeze({
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  jfif: 'image/jpeg',
  pjpeg: 'image/jpeg',
  pjp: 'image/jpeg',
  webp: 'image/webp',
  gif: 'image/gif',
  avif: 'image/avif',
  heic: 'image/heic',
  heif: 'image/heif',
  bmp: 'image/bmp',
  tif: 'image/tiff',
  tiff: 'image/tiff',
  ico: 'image/x-icon',
  jxl: 'image/jxl',
})

const DEFAULTS = Object.freeze({
  imageFormats: Object.freeze(['png', 'webp', 'jpg', 'jpeg']),
  // undefined: the host name of the page (`location.hostname`), or localhost without a page.
  defaultEndpointConnectHost: undefined,
  defaultEndpointConnectPort: 3001,
  defaultEndpointRoute: '/pixstore-image',
  errorHandlingMode: 'hybrid',
  frontendImageCacheLimit: 1000,
  frontendCleanupBatch: 50,
  frontendDbName: 'pixstore',
  frontendDbVersion: 1,
  imageStoreName: 'images',
})

const CONFIG_KEYS = Object.keys(DEFAULTS)

function configError(key, rule, value) {
  return new PixstoreError(
    `initPixstoreFrontend: ${key} must be ${rule}, received ${describe(value)}`,
    { code: 'INVALID_CONFIG' },
  )
}

function configTypeError(key, expected, value) {
  return argumentTypeError('initPixstoreFrontend', key, expected, value)
}

function checkString(key, value) {
  if (typeof value !== 'string') throw configTypeError(key, 'a string', value)
  if (value.trim() === '') throw configError(key, 'a non-blank string', value)
  return value
}

function checkInteger(key, value, min, max = Number.MAX_SAFE_INTEGER) {
  if (typeof value !== 'number') throw configTypeError(key, 'a number', value)
  if (!Number.isInteger(value) || value < min || value > max) {
    const rule = max === Number.MAX_SAFE_INTEGER ? `at least ${min}` : `from ${min} to ${max}`
    throw configError(key, `a whole number ${rule}`, value)
  }
  return value
}

function checkFormats(value) {
  if (!Array.isArray(value) || value.some((name) => typeof name !== 'string')) {
    throw configTypeError('imageFormats', 'an array of format names', value)
  }
  if (value.length === 0) throw configError('imageFormats', 'a list of at least one format', value)
  for (const [index, name] of value.entries()) {
    if (!Object.hasOwn(MIME_TYPES, name)) {
      throw configError('imageFormats', `a list of ${Object.keys(MIME_TYPES).join(', ')}`, name)
    }
    if (value.indexOf(name) !== index) {
      throw configError('imageFormats', 'a list without repeats', name)
    }
  }
  return Object.freeze([...value])
}

/**
 * The origin requests go to: a connect host given as a full origin is taken as it is (its port,
 * or its scheme's default port); a bare host name gets `http://` and the connect port.
 */
function endpointOrigin(host, port) {
  if (host.includes('://')) {
    let url
    try {
      url = new URL(host)
    } catch {
      url = null
    }
    if (
      url === null ||
      (url.protocol !== 'http:' && url.protocol !== 'https:') ||
      url.username !== '' ||
      url.password !== '' ||
      url.pathname !== '/' ||
      url.search !== '' ||
      url.hash !== ''
    ) {
      throw configError(
        'defaultEndpointConnectHost',
        'a host name or an origin such as https://img.example or http://img.example:8080 ' +
          '(no path, query or credentials)',
        host,
      )
    }
    return url.origin
  }

  if (/[\s/?#@\\]/.test(host)) {
    throw configError('defaultEndpointConnectHost', 'a host name or an http(s) origin', host)
  }
  const colons = host.split(':').length - 1
  if (colons === 1) {
    throw configError(
      'defaultEndpointConnectHost',
      'a host name without a port: set defaultEndpointConnectPort, or give an origin such as ' +
        `http://${host}`,
      host,
    )
  }
  const bracketed = colons > 1 && !host.startsWith('[') ? `[${host}]` : host
  return `http://${bracketed}:${port}`
}

/** Merges a configuration over the defaults and checks it; throws whatever the error mode. */
function resolveSettings(config) {
  if (config === undefined || config === null) config = {}
  if (typeof config !== 'object' || Array.isArray(config)) {
    throw configTypeError('config', 'an object or undefined', config)
  }
  const unknown = Object.keys(config).filter((key) => !CONFIG_KEYS.includes(key))
  if (unknown.length > 0) {
    throw new PixstoreError(
      `initPixstoreFrontend: unknown configuration key ${unknown.map((k) => JSON.stringify(k)).join(', ')}: ` +
        `expected any of ${CONFIG_KEYS.join(', ')}`,
      { code: 'INVALID_CONFIG' },
    )
  }
  const merged = { ...DEFAULTS }
  for (const key of CONFIG_KEYS) if (config[key] !== undefined) merged[key] = config[key]

  const imageFormats = checkFormats(merged.imageFormats)
  const port = checkInteger(
    'defaultEndpointConnectPort',
    merged.defaultEndpointConnectPort,
    1,
    65535,
  )
  const host =
    merged.defaultEndpointConnectHost === undefined
      ? globalThis.location?.hostname || 'localhost'
      : checkString('defaultEndpointConnectHost', merged.defaultEndpointConnectHost)
  const route = checkString('defaultEndpointRoute', merged.defaultEndpointRoute)
  if (!route.startsWith('/') || /[\s?#]/.test(route)) {
    throw configError('defaultEndpointRoute', 'a path that starts with / (no space, ? or #)', route)
  }
  if (!MODES.includes(merged.errorHandlingMode)) {
    throw configError('errorHandlingMode', `one of ${MODES.join(', ')}`, merged.errorHandlingMode)
  }
  const limit = checkInteger('frontendImageCacheLimit', merged.frontendImageCacheLimit, 1)
  const batch = checkInteger('frontendCleanupBatch', merged.frontendCleanupBatch, 1, limit)

  return Object.freeze({
    ...merged,
    imageFormats,
    defaultEndpointConnectHost: host,
    frontendImageCacheLimit: limit,
    frontendCleanupBatch: batch,
    frontendDbName: checkString('frontendDbName', merged.frontendDbName),
    frontendDbVersion: checkInteger('frontendDbVersion', merged.frontendDbVersion, 1),
    imageStoreName: checkString('imageStoreName', merged.imageStoreName),
    origin: endpointOrigin(host, port),
    routePrefix: route.replace(/\/+$/, ''),
  })
}

let current = null
let customFetcher = null

/** The configuration in force; the defaults until `initPixstoreFrontend` runs. */
function settings() {
  if (current === null) current = resolveSettings({})
  return current
}

/**
 * Configures the module: `config` is merged over the defaults, `fetcher` (optional) replaces
 * the request to the default endpoint. Calling it again reconfigures. A bad configuration
 * throws at once, whatever the error mode.
 */
export function initPixstoreFrontend(config, fetcher) {
  const next = resolveSettings(config)
  if (fetcher !== undefined && fetcher !== null && typeof fetcher !== 'function') {
    throw configTypeError(
      'customFetcher',
      'a function (record, context) => Promise<Uint8Array>, or undefined',
      fetcher,
    )
  }

  const previous = current
  current = next
  customFetcher = fetcher ?? null
  if (
    previous !== null &&
    (previous.frontendDbName !== next.frontendDbName ||
      previous.frontendDbVersion !== next.frontendDbVersion ||
      previous.imageStoreName !== next.imageStoreName)
  ) {
    closeDatabase()
  }
}

// The IndexedDB cache: one entry per id, `{ id, encrypted, token, lastUsed }`, in the database,
// store and shape that pixstore 3.x uses, so that a cache 3.x filled keeps serving.

const LAST_USED_INDEX = 'lastUsed'

let database = null

function openDatabase() {
  if (database !== null) return database
  const factory = globalThis.indexedDB
  if (!factory) return Promise.resolve(null)

  const { frontendDbName, frontendDbVersion, imageStoreName } = settings()
  const opening = new Promise((resolve, reject) => {
    const request = factory.open(frontendDbName, frontendDbVersion)
    request.onupgradeneeded = () => {
      const db = request.result
      if (db.objectStoreNames.contains(imageStoreName)) return
      const store = db.createObjectStore(imageStoreName, { keyPath: 'id' })
      // Lets cleanup find the least recently used entries by key alone. Stores that 3.x
      // created have no such index and are scanned instead.
      store.createIndex(LAST_USED_INDEX, 'lastUsed')
    }
    request.onsuccess = () => {
      const db = request.result
      // Another tab that upgrades the database waits until every connection is closed.
      db.onversionchange = () => {
        db.close()
        if (database === opening) database = null
      }
      db.onclose = () => {
        if (database === opening) database = null
      }
      resolve(db)
    }
    request.onerror = () => reject(request.error)
  })
  database = opening
  opening.catch(() => {
    if (database === opening) database = null
  })
  return opening
}

function closeDatabase() {
  const closing = database
  database = null
  if (closing !== null) closing.then((db) => db?.close()).catch(() => {})
}

/**
 * Runs `steps(store, finish)` in one transaction and resolves with the value given to `finish`
 * once the transaction has committed; resolves `fallback` when there is no IndexedDB.
 */
async function withStore(mode, fallback, steps) {
  const db = await openDatabase()
  if (db === null) return fallback
  const name = settings().imageStoreName
  return new Promise((resolve, reject) => {
    const transaction = db.transaction(name, mode)
    let result = fallback
    transaction.oncomplete = () => resolve(result)
    transaction.onabort = () => reject(transaction.error ?? new Error('transaction aborted'))
    steps(transaction.objectStore(name), (value) => {
      result = value
    })
  })
}

function asBytes(value) {
  if (value instanceof Uint8Array) return value
  if (value instanceof ArrayBuffer) return new Uint8Array(value)
  return null
}

/** The cached ciphertext of `id` under `token`, marked as just used; `null` when there is none. */
function takeCached(id, token) {
  return withStore('readwrite', null, (store, finish) => {
    store.get(id).onsuccess = (event) => {
      const entry = event.target.result
      const encrypted = entry ? asBytes(entry.encrypted) : null
      if (encrypted === null || entry.token !== token) return
      store.put({ id, encrypted, token, lastUsed: Date.now() })
      finish(encrypted)
    }
  })
}

/**
 * Caches the ciphertext of `id` under `token`, unless a newer token is already cached, then
 * trims the cache when it holds more than the limit.
 */
function storeCached(id, encrypted, token) {
  const { frontendImageCacheLimit: limit, frontendCleanupBatch: batch } = settings()
  return withStore('readwrite', false, (store, finish) => {
    store.get(id).onsuccess = (event) => {
      const cached = event.target.result
      if (cached && typeof cached.token === 'number' && cached.token > token) return
      store.put({ id, encrypted, token, lastUsed: Date.now() })
      finish(true)
      store.count().onsuccess = (counted) => {
        const excess = counted.target.result - limit
        if (excess > 0) evictLeastRecentlyUsed(store, Math.max(batch, excess))
      }
    }
  })
}

function evictLeastRecentlyUsed(store, count) {
  if (store.indexNames.contains(LAST_USED_INDEX)) {
    let left = count
    const request = store.index(LAST_USED_INDEX).openKeyCursor()
    request.onsuccess = () => {
      const cursor = request.result
      if (cursor === null || left === 0) return
      store.delete(cursor.primaryKey)
      left -= 1
      cursor.continue()
    }
    return
  }

  const entries = []
  const request = store.openCursor()
  request.onsuccess = () => {
    const cursor = request.result
    if (cursor !== null) {
      entries.push({ id: cursor.primaryKey, lastUsed: Number(cursor.value.lastUsed) || 0 })
      cursor.continue()
      return
    }
    entries.sort((a, b) => a.lastUsed - b.lastUsed)
    for (const entry of entries.slice(0, count)) store.delete(entry.id)
  }
}

function cacheError(action, id, err) {
  return new PixstoreError(`Could not ${action} the cached image ${id}: ${err?.message ?? err}`, {
    code: 'CACHE_ERROR',
    cause: err,
  })
}

function checkId(fn, id) {
  if (typeof id !== 'string') throw argumentTypeError(fn, 'id', 'a string', id)
  if (id === '') throw new PixstoreError(`${fn}: id is empty`, { code: 'INVALID_ARGUMENT' })
  return id
}

/**
 * Removes the cached image of an id. Resolves `true` when there was one. A `getImage` for the
 * id that is under way does not put it back.
 */
export function deleteCachedImage(id) {
  return guarded(async () => {
    checkId('deleteCachedImage', id)
    const running = loads.get(id)
    if (running) {
      running.keepOut = true
      loads.delete(id)
    }
    try {
      return await withStore('readwrite', false, (store, finish) => {
        store.count(id).onsuccess = (event) => {
          finish(event.target.result > 0)
          store.delete(id)
        }
      })
    } catch (err) {
      throw cacheError('delete', id, err)
    }
  })
}

/** Whether the cache holds an image for an id, under any token. */
export function cachedImageExists(id) {
  return guarded(async () => {
    checkId('cachedImageExists', id)
    try {
      return await withStore('readonly', false, (store, finish) => {
        store.count(id).onsuccess = (event) => finish(event.target.result > 0)
      })
    } catch (err) {
      throw cacheError('look up', id, err)
    }
  })
}

// Records, wire payloads and decryption

const STATE = Object.freeze({
  Success: 0,
  Updated: 1,
  NotFound: 2,
  MissingID: 3,
  MissingProof: 4,
  InvalidProof: 5,
  InternalError: 6,
})

/** Bytes before the ciphertext in an Updated payload: state, token, key, IV, tag. */
const UPDATED_HEADER = 1 + 8 + 32 + 12 + 16

function checkRecord(record) {
  const fn = 'getImage'
  if (record === null || typeof record !== 'object') {
    throw argumentTypeError(
      fn,
      'record',
      'an ImageRecord { id, token, meta, statelessProof }',
      record,
    )
  }
  checkId(fn, record.id)
  if (typeof record.token !== 'number' || Number.isNaN(record.token)) {
    throw argumentTypeError(fn, 'record.token', 'a number', record.token)
  }
  const { meta } = record
  if (meta === null || typeof meta !== 'object') {
    throw argumentTypeError(fn, 'record.meta', 'an object { key, iv, tag }', meta)
  }
  for (const field of ['key', 'iv', 'tag']) {
    if (typeof meta[field] !== 'string') {
      throw argumentTypeError(fn, `record.meta.${field}`, 'a base64 string', meta[field])
    }
  }
  if (record.statelessProof !== undefined && typeof record.statelessProof !== 'string') {
    throw argumentTypeError(fn, 'record.statelessProof', 'a string', record.statelessProof)
  }
  return record
}

/** A base64 meta field as bytes. The message never shows the value: it is key material. */
function metaBytes(record, field, length) {
  let binary = null
  try {
    binary = atob(record.meta[field])
  } catch {
    // not base64: reported below
  }
  if (binary === null || binary.length !== length) {
    const found = binary === null ? 'text that is not base64' : `${binary.length} bytes`
    throw new PixstoreError(
      `getImage: record.meta.${field} of ${record.id} must be ${length} bytes in base64, received ${found}`,
      { code: 'INVALID_ARGUMENT' },
    )
  }
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = binary.charCodeAt(i)
  return bytes
}

function recordMeta(record) {
  return {
    key: metaBytes(record, 'key', 32),
    iv: metaBytes(record, 'iv', 12),
    tag: metaBytes(record, 'tag', 16),
  }
}

function endpointError(message) {
  return new PixstoreError(message, { code: 'ENDPOINT_ERROR' })
}

/**
 * The ciphertext, token and meta a wire payload carries for a record; a `PixstoreError` for
 * the states that carry no image.
 */
function openPayload(payload, record) {
  const { id } = record
  if (payload.length === 0) {
    throw endpointError(`The image endpoint sent an empty answer for ${id}, not a wire payload`)
  }
  switch (payload[0]) {
    case STATE.Success:
      return { token: record.token, meta: recordMeta(record), ciphertext: payload.slice(1) }
    case STATE.Updated: {
      if (payload.length < UPDATED_HEADER) {
        throw endpointError(
          `The Updated payload for ${id} has ${payload.length} bytes, fewer than its ${UPDATED_HEADER}-byte header`,
        )
      }
      const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
      return {
        token: Number(view.getBigUint64(1, true)),
        meta: { key: payload.slice(9, 41), iv: payload.slice(41, 53), tag: payload.slice(53, 69) },
        ciphertext: payload.slice(UPDATED_HEADER),
      }
    }
    case STATE.NotFound:
      throw new PixstoreError(`Image not found: ${id}`, { code: 'NOT_FOUND' })
    case STATE.MissingID:
      throw new PixstoreError(
        `The image endpoint received no image id for ${id}: check the route and the fetcher`,
        { code: 'MISSING_ID' },
      )
    case STATE.MissingProof:
      throw new PixstoreError(
        `The image endpoint received no proof for ${id}: the x-pixstore-proof header must reach it ` +
          '(the record needs its statelessProof; proxies and CORS must let the header through)',
        { code: 'MISSING_PROOF' },
      )
    case STATE.InvalidProof:
      throw new PixstoreError(
        `The proof for ${id} is invalid or expired: get a fresh record from your server and call getImage with it`,
        { code: 'INVALID_PROOF' },
      )
    case STATE.InternalError:
      throw endpointError(`The image endpoint could not read the encrypted file of ${id}`)
    default:
      throw endpointError(
        `The image endpoint sent state byte ${payload[0]} for ${id}, not a wire payload`,
      )
  }
}

/** AES-256-GCM: the file holds the ciphertext alone, WebCrypto wants it followed by the tag. */
async function decrypt(ciphertext, meta, id) {
  const subtle = globalThis.crypto?.subtle
  if (!subtle) {
    throw new PixstoreError(
      'WebCrypto (crypto.subtle) is not available, so images cannot be decrypted: serve the page ' +
        'over https, or from localhost',
      { code: 'CRYPTO_UNAVAILABLE' },
    )
  }
  const sealed = new Uint8Array(ciphertext.length + meta.tag.length)
  sealed.set(ciphertext)
  sealed.set(meta.tag, ciphertext.length)

  const key = await subtle.importKey('raw', meta.key, { name: 'AES-GCM' }, false, ['decrypt'])
  try {
    const plain = await subtle.decrypt(
      { name: 'AES-GCM', iv: meta.iv, tagLength: 128 },
      key,
      sealed,
    )
    return new Uint8Array(plain)
  } catch (err) {
    throw new PixstoreError(
      `Image ${id} does not decrypt under its key: the encrypted bytes or the meta were changed`,
      { code: 'INTEGRITY_ERROR', cause: err },
    )
  }
}

/** The image in a decrypted file: its first byte names the format, the rest is the image. */
function imageBlob(plain, id) {
  const { imageFormats } = settings()
  const format = plain.length > 0 ? imageFormats[plain[0] - 1] : undefined
  if (format === undefined) {
    throw new PixstoreError(
      `Image ${id} has format byte ${plain[0]}, which imageFormats [${imageFormats.join(', ')}] ` +
        "does not name: give initPixstoreFrontend the backend's imageFormats",
      { code: 'INVALID_IMAGE' },
    )
  }
  return new Blob([plain.subarray(1)], { type: MIME_TYPES[format] })
}

// Fetching

async function fetchFromDefaultEndpoint(record) {
  const { origin, routePrefix } = settings()
  const url = `${origin}${routePrefix}/${encodeURIComponent(record.id)}`
  const headers = { 'x-pixstore-token': String(record.token) }
  if (record.statelessProof !== undefined) headers['x-pixstore-proof'] = record.statelessProof

  let response
  try {
    // The wire payload depends on the headers, so no HTTP cache may answer for it.
    response = await fetch(url, { headers, cache: 'no-store' })
  } catch (err) {
    throw new PixstoreError(`Could not reach the image endpoint at ${url}: ${err.message}`, {
      code: 'ENDPOINT_ERROR',
      cause: err,
    })
  }
  if (!response.ok) {
    throw endpointError(`The image endpoint answered ${response.status} for ${url}`)
  }
  return new Uint8Array(await response.arrayBuffer())
}

async function fetchPayload(record, context) {
  if (customFetcher === null) return fetchFromDefaultEndpoint(record)
  const payload = await customFetcher(record, context)
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload)
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)
  }
  throw new TypeError(
    `getImage: the custom fetcher must resolve to the wire payload as a Uint8Array, received ${describe(payload)}`,
  )
}

// Loading an image: the cache first, then the endpoint.

/** Loads under way, by id: `{ record, promise, keepOut }`. */
const loads = new Map()

async function load(job, context) {
  const { record } = job
  const meta = recordMeta(record)

  const cached = await takeCached(record.id, record.token).catch(() => null)
  if (cached !== null) {
    try {
      return {
        blob: imageBlob(await decrypt(cached, meta, record.id), record.id),
        token: record.token,
      }
    } catch (err) {
      if (!(err instanceof PixstoreError) || err.code !== 'INTEGRITY_ERROR') throw err
      // A damaged entry: drop it and fetch the image again.
      await withStore('readwrite', null, (store) => store.delete(record.id)).catch(() => {})
    }
  }

  const opened = openPayload(await fetchPayload(record, context), record)
  const blob = imageBlob(await decrypt(opened.ciphertext, opened.meta, record.id), record.id)
  if (!job.keepOut) {
    // A cache that fails (quota, private browsing) costs a request next time, not the image.
    await storeCached(record.id, opened.ciphertext, opened.token).catch(() => {})
  }
  return { blob, token: opened.token }
}

/**
 * One load per id at a time: a call for an id that is being loaded waits for that load and
 * takes its image, unless its own record is newer than what the load found.
 */
async function sharedLoad(record, context) {
  for (let running = loads.get(record.id); running; running = loads.get(record.id)) {
    const outcome = await running.promise.then(
      (value) => ({ value }),
      (error) => ({ error }),
    )
    if (outcome.value && outcome.value.token >= record.token) return outcome.value
    const sameRequest =
      running.record.token === record.token &&
      running.record.statelessProof === record.statelessProof
    if (outcome.error && sameRequest) throw outcome.error
  }

  const job = { record, keepOut: false }
  job.promise = load(job, context).finally(() => {
    if (loads.get(record.id) === job) loads.delete(record.id)
  })
  loads.set(record.id, job)
  return job.promise
}

/**
 * The image of a record as a `Blob` of its MIME type. A cached copy under the record's token is
 * decrypted with the record's meta; otherwise the fetcher gets the wire payload, and the
 * ciphertext is cached under the token it carries. `context` is handed to a custom fetcher.
 */
export function getImage(record, context) {
  return guarded(async () => (await sharedLoad(checkRecord(record), context)).blob)
}
