'use strict'

// Argument checks at the public boundary. A wrong type is a programmer's error: a TypeError
// that names the function, the parameter, what was expected and what was received.

/** Describes a received value for a message, without dumping its content. */
function describe(value) {
  if (value === null) return 'null'
  if (value === undefined) return 'undefined'
  if (Buffer.isBuffer(value)) return `a Buffer of ${value.length} bytes`
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

function fail(fn, name, expected, value) {
  return new TypeError(`${fn}: ${name} must be ${expected}, received ${describe(value)}`)
}

function string(fn, name, value) {
  if (typeof value !== 'string') throw fail(fn, name, 'a string', value)
  return value
}

function optionalString(fn, name, value) {
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'string') throw fail(fn, name, 'a string, null or undefined', value)
  return value
}

/** Accepts a Buffer or any Uint8Array, and returns a Buffer over the same memory. */
function bytes(fn, name, value) {
  if (Buffer.isBuffer(value)) return value
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.length)
  throw fail(fn, name, 'a Buffer or Uint8Array', value)
}

/**
 * A master key: bytes as a Buffer, or a string of their base64, handed on as it is. An empty
 * string (an unset variable read as `?? ''`) goes on as zero bytes, which the store refuses as
 * it does any key of the wrong length, rather than take it for "no key".
 */
function masterKey(fn, name, value) {
  if (value === '') return Buffer.alloc(0)
  if (typeof value === 'string') return value
  return bytes(fn, name, value)
}

/**
 * A client token as a request hands it over: a number, a numeric string (`req.query.token`),
 * `NaN` or `undefined`. Anything but a safe integer counts as no token.
 */
function token(value) {
  const number = typeof value === 'string' && /^\s*-?\d+\s*$/.test(value) ? Number(value) : value
  return Number.isSafeInteger(number) ? number : undefined
}

const CONFIG_KEYS = {
  imageFormats: 'an array of format names',
  imageRootDir: 'a string',
  databasePath: 'a string',
  statelessKeyWindowLength: 'a number',
  defaultEndpointEnabled: 'a boolean',
  defaultEndpointRoute: 'a string',
  defaultEndpointListenHost: 'a string',
  defaultEndpointListenPort: 'a number',
  accessControlAllowOrigin: 'a string',
  errorHandlingMode: 'a string',
  masterKey: 'a Buffer or Uint8Array of 32 bytes, a string of their base64, or null',
  databaseBusyTimeout: 'a number',
}

function hasType(key, value) {
  switch (key) {
    case 'imageFormats':
      return Array.isArray(value) && value.every((name) => typeof name === 'string')
    case 'statelessKeyWindowLength':
    case 'defaultEndpointListenPort':
    case 'databaseBusyTimeout':
      return typeof value === 'number'
    case 'defaultEndpointEnabled':
      return typeof value === 'boolean'
    case 'masterKey':
      return value instanceof Uint8Array || typeof value === 'string'
    default:
      return typeof value === 'string'
  }
}

/**
 * Checks the shape of a backend configuration: an object of known keys with values of the
 * right types. Keys set to `undefined` take their defaults. The rules on values are the
 * native core's.
 *
 * @returns {{ config: object, unknownKeys: string[] }}
 */
function backendConfig(config) {
  const fn = 'initPixstoreBackend'
  if (config === undefined || config === null) return { config: {}, unknownKeys: [] }
  if (typeof config !== 'object' || Array.isArray(config)) {
    throw fail(fn, 'config', 'an object', config)
  }
  const checked = {}
  const unknownKeys = []
  for (const [key, value] of Object.entries(config)) {
    if (!Object.hasOwn(CONFIG_KEYS, key)) {
      unknownKeys.push(key)
      continue
    }
    if (value === undefined) continue
    // No master key, even when PIXSTORE_MASTER_KEY is set: the native side reads '' so.
    if (key === 'masterKey' && value === null) {
      checked[key] = ''
      continue
    }
    if (!hasType(key, value)) throw fail(fn, `config.${key}`, CONFIG_KEYS[key], value)
    checked[key] = key === 'masterKey' ? masterKey(fn, 'config.masterKey', value) : value
  }
  return { config: checked, unknownKeys }
}

module.exports = {
  describe,
  string,
  optionalString,
  bytes,
  token,
  masterKey,
  backendConfig,
  CONFIG_KEY_NAMES: Object.keys(CONFIG_KEYS),
}
