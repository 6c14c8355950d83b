// Re-exports the CommonJS module, so that `import` and `require` share one module state.
import shared from './index.js'

export const { getLastPixstoreError, setCustomErrorHandler, PixstoreError, ERROR_CODES } = shared
