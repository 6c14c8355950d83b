// Re-exports the CommonJS module, so that `import` and `require` share one module state.
import backend from './index.js'

export const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  saveImageFromFile,
  updateImage,
  updateImageFromFile,
  deleteImage,
  imageExists,
  readImage,
  getImageRecord,
  customEndpointHelper,
  stopDefaultEndpoint,
  rotateMasterKey,
  verifyStore,
  PixstoreError,
} = backend
