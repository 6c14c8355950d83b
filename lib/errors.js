'use strict'

/** Every code a `PixstoreError` can carry. The README explains each. */
const ERROR_CODES = Object.freeze([
  'NOT_INITIALIZED',
  'INVALID_CONFIG',
  'INVALID_ARGUMENT',
  'INVALID_ID',
  'INVALID_IMAGE',
  'NOT_FOUND',
  'FILE_NOT_READABLE',
  'INTEGRITY_ERROR',
  'STORAGE_ERROR',
  'STORAGE_FULL',
  'STORAGE_READ_ONLY',
  'DATABASE_ERROR',
  'DATABASE_BUSY',
  'DATABASE_CORRUPT',
  'INCOMPATIBLE_STORE',
  'ENDPOINT_UNAVAILABLE',
  'DEFAULT_ENDPOINT_RUNNING',
  'STORE_IN_USE',
  'MASTER_KEY_REQUIRED',
  'WRONG_MASTER_KEY',
])

class PixstoreError extends Error {
  /**
   * @param {string} message
   * @param {{ code?: string, detail?: string }} [options]
   */
  constructor(message, options = {}) {
    super(message)
    this.name = 'PixstoreError'
    this.code = options.code ?? 'UNKNOWN'
    if (options.detail !== undefined) this.detail = options.detail
  }
}

/** Whether a value the native layer returned is a failure rather than a result. */
function isFailure(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    !ArrayBuffer.isView(value) &&
    typeof value.code === 'string' &&
    typeof value.message === 'string'
  )
}

/** Returns a native result, or throws the `PixstoreError` that a native failure stands for. */
function settle(value) {
  if (isFailure(value)) {
    throw new PixstoreError(value.message, { code: value.code, detail: value.detail ?? undefined })
  }
  return value ?? null
}

module.exports = { PixstoreError, ERROR_CODES, settle }
