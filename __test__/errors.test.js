'use strict'

// The five error handling modes, as pixstore 3.x's table has them, for a PixstoreError and for
// any other error (a TypeError from a wrong argument); the TypeError messages; invalid
// configurations; PixstoreError and ERROR_CODES.

const fs = require('node:fs')
const path = require('node:path')

const backend = require('pixstore/backend')
const shared = require('pixstore/shared')
const { asset, freshStore } = require('./helpers.js')

const {
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
} = backend
const { PixstoreError, ERROR_CODES, getLastPixstoreError, setCustomErrorHandler } = shared

const MODES = ['hybrid', 'throw', 'warn', 'silent', 'custom']
const store = freshStore()
const png = asset('1-pixel.png')
const notAnImage = asset('not-an-image.txt')
const TYPE_ERROR_42 = 'saveImage: buffer must be a Buffer or Uint8Array, received the number 42'

function useMode(mode) {
  initPixstoreBackend({ ...store.config, errorHandlingMode: mode })
}

/** The error a promise rejects with; fails the test when it resolves. */
async function rejection(promise) {
  try {
    await promise
  } catch (err) {
    return err
  }
  throw new Error('expected the promise to reject')
}

/** The error a synchronous call throws; fails the test when it returns. */
function thrown(work) {
  try {
    work()
  } catch (err) {
    return err
  }
  throw new Error('expected the call to throw')
}

function expectInvalidImage(err) {
  expect(err).toBeInstanceOf(PixstoreError)
  expect(err).toMatchObject({
    name: 'PixstoreError',
    code: 'INVALID_IMAGE',
    message: 'Invalid image file',
  })
}

function expectTypeError42(err) {
  expect(err).toBeInstanceOf(TypeError)
  expect(err).not.toBeInstanceOf(PixstoreError)
  expect(err.message).toBe(TYPE_ERROR_42)
}

let warn
beforeEach(() => {
  warn = jest.spyOn(console, 'warn').mockImplementation(() => {})
})
afterEach(() => {
  warn.mockRestore()
})

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
})

afterAll(async () => {
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

describe("'hybrid' mode", () => {
  test('a PixstoreError is warned, remembered and absorbed; a later success does not reset it', async () => {
    useMode('hybrid')
    expect(getLastPixstoreError()).toBeNull()

    expect(await saveImage(notAnImage)).toBeNull()
    expect(warn).toHaveBeenCalledTimes(1)
    const err = warn.mock.calls[0][0]
    expectInvalidImage(err)
    expect(getLastPixstoreError()).toBe(err)

    const record = await saveImage(png)
    expect(record).toMatchObject({ id: expect.any(String) })
    expect(getLastPixstoreError()).toBe(err)
    expect(getImageRecord(record.id)).toMatchObject({ id: record.id })
    expect(getLastPixstoreError()).toBe(err)

    // The most recent one is remembered.
    expect(await updateImage('nosuchimage', png)).toBeNull()
    expect(getLastPixstoreError()).toMatchObject({
      code: 'NOT_FOUND',
      message: 'Image not found: nosuchimage',
    })
    // getImageRecord, synchronous, goes through the mode too.
    expect(getImageRecord('../x')).toBeNull()
    expect(getLastPixstoreError()).toMatchObject({ name: 'PixstoreError', code: 'INVALID_ID' })
    expect(warn).toHaveBeenCalledTimes(3)
    expect(warn).toHaveBeenLastCalledWith(getLastPixstoreError())
  })

  test('a TypeError is thrown, neither warned nor remembered', async () => {
    useMode('hybrid')
    const remembered = getLastPixstoreError()
    expect(remembered).toBeInstanceOf(PixstoreError)

    expectTypeError42(await rejection(saveImage(42)))
    expect(thrown(() => getImageRecord(42))).toBeInstanceOf(TypeError)
    expect(warn).not.toHaveBeenCalled()
    expect(getLastPixstoreError()).toBe(remembered)
  })
})

describe("'throw' mode", () => {
  test('a PixstoreError is thrown, not warned, not remembered', async () => {
    useMode('throw')
    const remembered = getLastPixstoreError()

    expectInvalidImage(await rejection(saveImage(notAnImage)))
    expect(thrown(() => getImageRecord('../x'))).toMatchObject({
      name: 'PixstoreError',
      code: 'INVALID_ID',
    })
    expect(warn).not.toHaveBeenCalled()
    expect(getLastPixstoreError()).toBe(remembered)
  })

  test('a TypeError is thrown', async () => {
    useMode('throw')
    expectTypeError42(await rejection(saveImage(42)))
    expect(thrown(() => getImageRecord(42))).toBeInstanceOf(TypeError)
    expect(warn).not.toHaveBeenCalled()
  })
})

describe("'warn' mode", () => {
  test('a PixstoreError is warned, result null, not remembered', async () => {
    useMode('warn')
    const remembered = getLastPixstoreError()

    expect(await saveImage(notAnImage)).toBeNull()
    expect(warn).toHaveBeenCalledTimes(1)
    expectInvalidImage(warn.mock.calls[0][0])
    expect(getImageRecord('../x')).toBeNull()
    expect(warn).toHaveBeenCalledTimes(2)
    expect(warn.mock.calls[1][0]).toMatchObject({ code: 'INVALID_ID' })
    expect(getLastPixstoreError()).toBe(remembered)
  })

  test('a TypeError is warned too, result null', async () => {
    useMode('warn')
    expect(await saveImage(42)).toBeNull()
    expect(warn).toHaveBeenCalledTimes(1)
    expectTypeError42(warn.mock.calls[0][0])
    expect(getImageRecord(42)).toBeNull()
    expect(warn.mock.calls[1][0]).toBeInstanceOf(TypeError)
  })
})

describe("'silent' mode", () => {
  test('a PixstoreError: result null, nothing warned or remembered', async () => {
    useMode('silent')
    const remembered = getLastPixstoreError()
    expect(await saveImage(notAnImage)).toBeNull()
    expect(await updateImage('nosuchimage', png)).toBeNull()
    expect(getImageRecord('../x')).toBeNull()
    expect(warn).not.toHaveBeenCalled()
    expect(getLastPixstoreError()).toBe(remembered)
    // A success still returns its value.
    expect(await saveImage(png)).toMatchObject({ id: expect.any(String) })
  })

  test('a TypeError: result null as well', async () => {
    useMode('silent')
    expect(await saveImage(42)).toBeNull()
    expect(getImageRecord(42)).toBeNull()
    expect(warn).not.toHaveBeenCalled()
  })
})

describe("'custom' mode", () => {
  test('with no handler set, an Error("Custom error handler is not set") is thrown', async () => {
    // The handler is module state: a fresh copy of the modules has none.
    let fresh
    jest.isolateModules(() => {
      fresh = { backend: require('pixstore/backend'), shared: require('pixstore/shared') }
    })
    fresh.backend.initPixstoreBackend({ ...store.config, errorHandlingMode: 'custom' })

    for (const err of [
      await rejection(fresh.backend.saveImage(notAnImage)),
      await rejection(fresh.backend.saveImage(42)),
      thrown(() => fresh.backend.getImageRecord('../x')),
    ]) {
      expect(err).toBeInstanceOf(Error)
      expect(err).not.toBeInstanceOf(fresh.shared.PixstoreError)
      expect(err).not.toBeInstanceOf(TypeError)
      expect(err.name).toBe('Error')
      expect(err.message).toBe('Custom error handler is not set')
    }
    expect(warn).not.toHaveBeenCalled()
  })

  test('the handler is called with a PixstoreError; result null', async () => {
    const handler = jest.fn()
    setCustomErrorHandler(handler)
    useMode('custom')
    const remembered = getLastPixstoreError()

    expect(await saveImage(notAnImage)).toBeNull()
    expect(handler).toHaveBeenCalledTimes(1)
    expectInvalidImage(handler.mock.calls[0][0])
    expect(getImageRecord('../x')).toBeNull()
    expect(handler).toHaveBeenCalledTimes(2)
    expect(handler.mock.calls[1][0]).toMatchObject({ code: 'INVALID_ID' })
    expect(warn).not.toHaveBeenCalled()
    expect(getLastPixstoreError()).toBe(remembered)
  })

  test('the handler is called with a TypeError too; result null', async () => {
    const handler = jest.fn()
    setCustomErrorHandler(handler)
    useMode('custom')
    expect(await saveImage(42)).toBeNull()
    expect(handler).toHaveBeenCalledTimes(1)
    expectTypeError42(handler.mock.calls[0][0])
    expect(warn).not.toHaveBeenCalled()
  })

  test('a later setCustomErrorHandler replaces the handler', async () => {
    const first = jest.fn()
    const second = jest.fn()
    setCustomErrorHandler(first)
    setCustomErrorHandler(second)
    useMode('custom')
    expect(await deleteImage('A')).toBeNull()
    expect(first).not.toHaveBeenCalled()
    expect(second).toHaveBeenCalledWith(expect.objectContaining({ code: 'INVALID_ID' }))
  })

  test('setCustomErrorHandler refuses a non-function with a TypeError and keeps the handler', async () => {
    const handler = jest.fn()
    setCustomErrorHandler(handler)
    useMode('throw')
    const err = thrown(() => setCustomErrorHandler('log it'))
    expect(err).toBeInstanceOf(TypeError)
    expect(err.message).toBe(
      'setCustomErrorHandler: handler must be a function (err) => void, received the string "log it"',
    )
    useMode('custom')
    expect(await saveImage(notAnImage)).toBeNull()
    expect(handler).toHaveBeenCalledTimes(1)
  })
})

describe('TypeErrors name the function, the parameter, what was expected and what was received', () => {
  beforeAll(() => useMode('throw'))

  test.each([
    ['saveImage(42)', () => saveImage(42), TYPE_ERROR_42],
    [
      "saveImage('a string')",
      () => saveImage('a string'),
      'saveImage: buffer must be a Buffer or Uint8Array, received the string "a string"',
    ],
    [
      'saveImage(new ArrayBuffer(8))',
      () => saveImage(new ArrayBuffer(8)),
      'saveImage: buffer must be a Buffer or Uint8Array, received an ArrayBuffer of 8 bytes',
    ],
    [
      'saveImage(new Uint16Array(2))',
      () => saveImage(new Uint16Array(2)),
      'saveImage: buffer must be a Buffer or Uint8Array, received a Uint16Array of 4 bytes',
    ],
    [
      'saveImage([137, 80])',
      () => saveImage([137, 80]),
      'saveImage: buffer must be a Buffer or Uint8Array, received an array of 2 items',
    ],
    [
      'saveImage(png, 7)',
      () => saveImage(png, 7),
      'saveImage: dir must be a string, null or undefined, received the number 7',
    ],
    [
      "saveImageFromFile(Buffer.from('x'))",
      () => saveImageFromFile(Buffer.from('x')),
      'saveImageFromFile: filePath must be a string, received a Buffer of 1 bytes',
    ],
    [
      "saveImageFromFile('/tmp/x.png', {})",
      () => saveImageFromFile('/tmp/x.png', {}),
      'saveImageFromFile: dir must be a string, null or undefined, received an object (Object)',
    ],
    [
      'updateImage(1, png)',
      () => updateImage(1, png),
      'updateImage: id must be a string, received the number 1',
    ],
    [
      "updateImage('abc', undefined)",
      () => updateImage('abc', undefined),
      'updateImage: buffer must be a Buffer or Uint8Array, received undefined',
    ],
    [
      "updateImageFromFile(true, '/tmp/x.png')",
      () => updateImageFromFile(true, '/tmp/x.png'),
      'updateImageFromFile: id must be a string, received the boolean true',
    ],
    [
      "updateImageFromFile('abc', null)",
      () => updateImageFromFile('abc', null),
      'updateImageFromFile: filePath must be a string, received null',
    ],
    [
      'deleteImage(undefined)',
      () => deleteImage(undefined),
      'deleteImage: id must be a string, received undefined',
    ],
    [
      'imageExists(10n)',
      () => imageExists(10n),
      'imageExists: id must be a string, received the bigint 10',
    ],
    [
      "readImage(() => 'id')",
      () => readImage(() => 'id'),
      'readImage: id must be a string, received a function',
    ],
  ])('%s rejects with the TypeError %j', async (_label, call, message) => {
    const promise = call()
    // An argument error is a rejection of the returned promise, not a synchronous throw.
    expect(typeof promise.then).toBe('function')
    const err = await rejection(promise)
    expect(err).toBeInstanceOf(TypeError)
    expect(err.message).toBe(message)
  })

  test('getImageRecord throws its TypeError synchronously', () => {
    const err = thrown(() => getImageRecord(Symbol('id')))
    expect(err).toBeInstanceOf(TypeError)
    expect(err.message).toBe('getImageRecord: id must be a string, received a symbol')
  })
})

describe('initPixstoreBackend throws at once on an invalid configuration, whatever the mode', () => {
  const INVALID = [
    [{ imageRootDir: '' }, 'imageRootDir'],
    [{ imageRootDir: '   ' }, 'imageRootDir'],
    [{ statelessKeyWindowLength: 0 }, 'statelessKeyWindowLength'],
    [{ statelessKeyWindowLength: 1.5 }, 'statelessKeyWindowLength'],
    [{ statelessKeyWindowLength: -2 }, 'statelessKeyWindowLength'],
    [{ statelessKeyWindowLength: NaN }, 'statelessKeyWindowLength'],
    [{ defaultEndpointListenPort: 0 }, 'defaultEndpointListenPort'],
    [{ defaultEndpointListenPort: 65536 }, 'defaultEndpointListenPort'],
    [{ defaultEndpointListenPort: 1.5 }, 'defaultEndpointListenPort'],
    [{ errorHandlingMode: 'loud' }, 'errorHandlingMode'],
    [{ imageFormats: ['svg'] }, 'svg'],
    [{ imageFormats: ['png', 'svg'] }, 'imageFormats[1]'],
    [{ imageFormats: [] }, 'imageFormats'],
    [{ imageFormats: ['PNG'] }, 'imageFormats'],
    [{ imageFormats: ['png', 'png'] }, 'imageFormats[1]'],
    [{ imageRootdir: '/tmp/typo' }, 'imageRootdir'],
  ]

  const WRONG_TYPES = [
    [
      'not an object',
      'initPixstoreBackend: config must be an object, received the string "not an object"',
    ],
    [[], 'initPixstoreBackend: config must be an object, received an array of 0 items'],
    [
      { imageRootDir: 5 },
      'initPixstoreBackend: config.imageRootDir must be a string, received the number 5',
    ],
    [
      { statelessKeyWindowLength: '20000' },
      'initPixstoreBackend: config.statelessKeyWindowLength must be a number, received the string "20000"',
    ],
    [
      { defaultEndpointListenPort: '3001' },
      'initPixstoreBackend: config.defaultEndpointListenPort must be a number, received the string "3001"',
    ],
    [
      { defaultEndpointEnabled: 'no' },
      'initPixstoreBackend: config.defaultEndpointEnabled must be a boolean, received the string "no"',
    ],
    [
      { imageFormats: 'png' },
      'initPixstoreBackend: config.imageFormats must be an array of format names, received the string "png"',
    ],
    [
      { imageFormats: ['png', 1] },
      'initPixstoreBackend: config.imageFormats must be an array of format names, received an array of 2 items',
    ],
    [
      { errorHandlingMode: 1 },
      'initPixstoreBackend: config.errorHandlingMode must be a string, received the number 1',
    ],
  ]

  test.each(MODES)('in %s mode: every rule broken is a PixstoreError INVALID_CONFIG', (mode) => {
    const handler = jest.fn()
    setCustomErrorHandler(handler)
    useMode(mode)
    for (const [bad, named] of INVALID) {
      const err = thrown(() =>
        initPixstoreBackend({ ...store.config, errorHandlingMode: mode, ...bad }),
      )
      expect(err).toBeInstanceOf(PixstoreError)
      expect(err).toBeInstanceOf(Error)
      expect(err).toMatchObject({ name: 'PixstoreError', code: 'INVALID_CONFIG' })
      expect(err.message).toContain(named)
    }
    expect(warn).not.toHaveBeenCalled()
    expect(handler).not.toHaveBeenCalled()
  })

  test.each(MODES)('in %s mode: a value of the wrong type is a TypeError', (mode) => {
    const handler = jest.fn()
    setCustomErrorHandler(handler)
    useMode(mode)
    for (const [bad, message] of WRONG_TYPES) {
      const config =
        Array.isArray(bad) || typeof bad !== 'object' ? bad : { ...store.config, ...bad }
      const err = thrown(() => initPixstoreBackend(config))
      expect(err).toBeInstanceOf(TypeError)
      expect(err.message).toBe(message)
    }
    expect(warn).not.toHaveBeenCalled()
    expect(handler).not.toHaveBeenCalled()
  })

  test('the boundary values are accepted', () => {
    for (const ok of [
      { statelessKeyWindowLength: -1 },
      { statelessKeyWindowLength: 1 },
      { defaultEndpointListenPort: 1 },
      { defaultEndpointListenPort: 65535 },
      { imageFormats: ['jxl'] },
    ]) {
      expect(initPixstoreBackend({ ...store.config, ...ok })).toBeUndefined()
    }
  })
})

describe('PixstoreError and ERROR_CODES', () => {
  test('pixstore/backend and pixstore/shared export the same PixstoreError class', () => {
    expect(typeof PixstoreError).toBe('function')
    expect(backend.PixstoreError).toBe(shared.PixstoreError)
  })

  test('a PixstoreError is an Error named PixstoreError with a code and an optional detail', () => {
    const err = new PixstoreError('Image not found: x', { code: 'NOT_FOUND', detail: 'why' })
    expect(err).toBeInstanceOf(Error)
    expect(err).toBeInstanceOf(PixstoreError)
    expect(err).toMatchObject({
      name: 'PixstoreError',
      message: 'Image not found: x',
      code: 'NOT_FOUND',
      detail: 'why',
    })
    expect(typeof err.stack).toBe('string')
    expect(Object.prototype.toString.call(err)).toBe('[object Error]')

    const bare = new PixstoreError('boom')
    expect(bare.code).toBe('UNKNOWN')
    expect('detail' in bare).toBe(false)
  })

  test('the errors the functions throw are instances of the exported class, with a detail where the message is fixed', async () => {
    useMode('throw')
    const err = await rejection(saveImage(notAnImage))
    expect(err).toBeInstanceOf(backend.PixstoreError)
    expect(err).toBeInstanceOf(shared.PixstoreError)
    expect(err.message).toBe('Invalid image file')
    expect(typeof err.detail).toBe('string')
    expect(err.detail.length).toBeGreaterThan(0)
  })

  test('ERROR_CODES lists every code, and is frozen', () => {
    // The codes this suite knows; later versions may add more, never remove one.
    expect(ERROR_CODES).toEqual(
      expect.arrayContaining([
        'NOT_INITIALIZED',
        'INVALID_CONFIG',
        'INVALID_ARGUMENT',
        'INVALID_ID',
        'INVALID_IMAGE',
        'NOT_FOUND',
        'FILE_NOT_READABLE',
        'INTEGRITY_ERROR',
        'STORAGE_ERROR',
        'DATABASE_ERROR',
        'INCOMPATIBLE_STORE',
      ]),
    )
    expect(new Set(ERROR_CODES).size).toBe(ERROR_CODES.length)
    expect(Object.isFrozen(ERROR_CODES)).toBe(true)
  })

  test('ERROR_CODES matches the PixstoreErrorCode type and every code the native core has', () => {
    const root = path.join(__dirname, '..')
    const types = fs.readFileSync(path.join(root, 'types', 'index.d.ts'), 'utf8')
    const union = types.match(/export type PixstoreErrorCode =([^;]*?)(?:\n\n|;|$)/)[1]
    const typed = [...union.matchAll(/'([A-Z_]+)'/g)].map((m) => m[1])
    expect([...typed].sort()).toEqual([...ERROR_CODES].sort())

    // Every code the Rust core can hand over (ErrorKind::code) is listed.
    const rust = fs.readFileSync(path.join(root, 'src', 'core', 'error.rs'), 'utf8')
    const native = [...rust.matchAll(/ErrorKind::\w+ => "([A-Z_]+)"/g)].map((m) => m[1])
    expect(native.length).toBeGreaterThanOrEqual(11)
    expect([...native].sort()).toEqual([...ERROR_CODES].sort())
  })

  test('every code met in practice is in ERROR_CODES', async () => {
    useMode('throw')
    const codes = new Set()
    const collect = async (promise) => codes.add((await rejection(promise)).code)
    await collect(saveImage(notAnImage))
    await collect(saveImage(png, '!!!'))
    await collect(updateImage('nosuchimage', png))
    await collect(readImage('../x'))
    await collect(saveImageFromFile('/nonexistent/pixstore/file.png'))
    codes.add(thrown(() => initPixstoreBackend({ ...store.config, imageFormats: ['svg'] })).code)
    await closePixstoreBackend()
    await collect(imageExists('abc'))
    useMode('throw')
    expect([...codes].sort()).toEqual(
      [
        'FILE_NOT_READABLE',
        'INVALID_ARGUMENT',
        'INVALID_CONFIG',
        'INVALID_ID',
        'INVALID_IMAGE',
        'NOT_FOUND',
        'NOT_INITIALIZED',
      ].sort(),
    )
    for (const code of codes) expect(ERROR_CODES).toContain(code)
  })
})
