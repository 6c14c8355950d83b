'use strict'

// The one module state of the process. ESM entry files import these CommonJS modules rather
// than keeping copies, so `import` and `require` users share it.

const { PixstoreError } = require('./errors.js')
const { describe } = require('./args.js')

const state = {
  mode: 'hybrid',
  lastError: null,
  customHandler: null,
}

function setErrorHandlingMode(mode) {
  state.mode = mode
}

/**
 * Applies the error handling mode to a failure: returns `null` when the mode absorbs it, and
 * throws otherwise.
 */
function handleError(err) {
  const isPixstore = err instanceof PixstoreError
  switch (state.mode) {
    case 'hybrid':
      if (!isPixstore) throw err
      console.warn(err)
      state.lastError = err
      return null
    case 'warn':
      console.warn(err)
      return null
    case 'silent':
      return null
    case 'custom':
      if (state.customHandler === null) throw new Error('Custom error handler is not set')
      state.customHandler(err)
      return null
    default:
      throw err
  }
}

/** Runs `work`, passing any failure through the error handling mode. */
async function guard(work) {
  try {
    return await work()
  } catch (err) {
    return handleError(err)
  }
}

/** `guard` for synchronous functions. */
function guardSync(work) {
  try {
    return work()
  } catch (err) {
    return handleError(err)
  }
}

function getLastPixstoreError() {
  return state.lastError
}

function setCustomErrorHandler(handler) {
  guardSync(() => {
    if (typeof handler !== 'function') {
      throw new TypeError(
        `setCustomErrorHandler: handler must be a function (err) => void, received ${describe(handler)}`,
      )
    }
    state.customHandler = handler
  })
}

module.exports = {
  setErrorHandlingMode,
  guard,
  guardSync,
  getLastPixstoreError,
  setCustomErrorHandler,
}
