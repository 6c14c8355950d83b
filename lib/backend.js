'use strict'

const { isMainThread } = require('node:worker_threads')
const native = require('./native.js')
const args = require('./args.js')
const { PixstoreError, settle } = require('./errors.js')
const { guard, guardSync, setErrorHandlingMode } = require('./state.js')

function initPixstoreBackend(config) {
  const { config: checked, unknownKeys } = args.backendConfig(config)
  if (unknownKeys.length > 0) {
    throw new PixstoreError(
      `Unknown configuration key ${unknownKeys.map((k) => JSON.stringify(k)).join(', ')}: ` +
        `expected any of ${args.CONFIG_KEY_NAMES.join(', ')}`,
      { code: 'INVALID_CONFIG' },
    )
  }
  const { errorHandlingMode } = settle(native.init(checked))
  setErrorHandlingMode(errorHandlingMode)
}

function closePixstoreBackend() {
  return guard(() => native.close())
}

function saveImage(buffer, dir) {
  return guard(async () => {
    const image = args.bytes('saveImage', 'buffer', buffer)
    const prefix = args.optionalString('saveImage', 'dir', dir)
    return settle(await native.saveImage(image, prefix, isMainThread))
  })
}

function saveImageFromFile(filePath, dir) {
  return guard(async () => {
    const path = args.string('saveImageFromFile', 'filePath', filePath)
    const prefix = args.optionalString('saveImageFromFile', 'dir', dir)
    return settle(await native.saveImageFromFile(path, prefix))
  })
}

function updateImage(id, buffer) {
  return guard(async () => {
    const checkedId = args.string('updateImage', 'id', id)
    const image = args.bytes('updateImage', 'buffer', buffer)
    return settle(await native.updateImage(checkedId, image, isMainThread))
  })
}

function updateImageFromFile(id, filePath) {
  return guard(async () => {
    const checkedId = args.string('updateImageFromFile', 'id', id)
    const path = args.string('updateImageFromFile', 'filePath', filePath)
    return settle(await native.updateImageFromFile(checkedId, path))
  })
}

function deleteImage(id) {
  return guard(async () => settle(await native.deleteImage(args.string('deleteImage', 'id', id))))
}

function imageExists(id) {
  return guard(async () => settle(native.imageExists(args.string('imageExists', 'id', id))))
}

function readImage(id) {
  return guard(async () => settle(await native.readImage(args.string('readImage', 'id', id))))
}

function getImageRecord(id) {
  return guardSync(() => settle(native.getImageRecord(args.string('getImageRecord', 'id', id))))
}

function customEndpointHelper(id, clientToken, proof) {
  return guard(async () => {
    const fn = 'customEndpointHelper'
    const checkedId = args.optionalString(fn, 'id', id) ?? ''
    const checkedProof = args.optionalString(fn, 'proof', proof)
    return settle(
      await native.customEndpointHelper(checkedId, args.token(clientToken), checkedProof),
    )
  })
}

function rotateMasterKey(newKey) {
  return guard(async () => {
    const fn = 'rotateMasterKey'
    if (newKey !== null && !(newKey instanceof Uint8Array) && typeof newKey !== 'string') {
      throw new TypeError(
        `${fn}: newKey must be a Buffer or Uint8Array of 32 bytes, a string of their base64, ` +
          `or null, received ${args.describe(newKey)}`,
      )
    }
    const key = newKey === null ? undefined : args.masterKey(fn, 'newKey', newKey)
    return { rewrapped: settle(await native.rotateMasterKey(key)) }
  })
}

function verifyStore(options = {}) {
  return guard(async () => {
    const fn = 'verifyStore'
    if (typeof options !== 'object' || options === null) {
      throw new TypeError(`${fn}: options must be an object, received ${args.describe(options)}`)
    }
    const unknown = Object.keys(options).find((key) => key !== 'repair' && key !== 'onProgress')
    if (unknown !== undefined) {
      throw new TypeError(
        `${fn}: unknown option ${JSON.stringify(unknown)}: expected repair or onProgress`,
      )
    }
    const { repair = false, onProgress } = options
    if (typeof repair !== 'boolean') {
      throw new TypeError(
        `${fn}: options.repair must be a boolean, received ${args.describe(repair)}`,
      )
    }
    if (onProgress !== undefined && typeof onProgress !== 'function') {
      throw new TypeError(
        `${fn}: options.onProgress must be a function, received ${args.describe(onProgress)}`,
      )
    }
    // A callback that throws must not become an uncaught exception: the call fails with it.
    let thrown
    const report = settle(
      await native.verifyStore(
        repair,
        onProgress &&
          ((progress) => {
            try {
              onProgress(progress)
            } catch (err) {
              thrown ??= { err }
            }
          }),
      ),
    )
    if (thrown) throw thrown.err
    return report
  })
}

function stopDefaultEndpoint() {
  return guard(async () => {
    settle(await native.stopDefaultEndpoint())
  })
}

module.exports = {
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
}
