'use strict'

// Every public backend function, checked against real values: round trips of every photo format
// in assets/, the format byte inside the encrypted file (decrypted here with node:crypto), the
// record shape, the file layout, tokens, dir cleaning, re-initialisation and the closed state.

const { spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

const backend = require('pixstore/backend')
const { PixstoreError } = require('pixstore/shared')
const { asset, assetPath, freshStore, encryptedFiles } = require('./helpers.js')

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

const EXTENDED_FORMATS = ['png', 'webp', 'jpg', 'jpeg', 'gif', 'avif', 'bmp', 'tiff']

// Every real photo in assets/, with the format name content sniffing gives it.
const PHOTOS = [
  ['1-pixel.png', 'png'],
  ['1-pixel.webp', 'webp'],
  ['vilnius-800.png', 'png'],
  ['vilnius-800.webp', 'webp'],
  ['antalya.jpg', 'jpg'],
  ['vilnius.jpg', 'jpg'],
  ['thumb-64.jpg', 'jpg'],
  ['vilnius-800.gif', 'gif'],
  ['vilnius-800.avif', 'avif'],
  ['vilnius-800.bmp', 'bmp'],
  ['vilnius-800.tiff', 'tiff'],
]
const DEFAULT_FORMAT_PHOTOS = PHOTOS.filter(([, format]) => ['png', 'webp', 'jpg'].includes(format))

const BASE64_PADDED = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

/** Splits an id into its DIR (or null) and KEY. */
function splitId(id) {
  const colon = id.indexOf(':')
  return colon === -1 ? [null, id] : [id.slice(0, colon), id.slice(colon + 1)]
}

/** The encrypted files of one id, as absolute paths: `<root>[/DIR]/KEY.*.pixstore-image`. */
function filesOf(root, id) {
  const [dir, key] = splitId(id)
  const folder = dir === null ? root : path.join(root, dir)
  if (!fs.existsSync(folder)) return []
  return fs
    .readdirSync(folder)
    .filter((name) => name.startsWith(`${key}.`) && name.endsWith('.pixstore-image'))
    .map((name) => path.join(folder, name))
}

/** The one encrypted file of an id; fails the test when there is not exactly one. */
function onlyFileOf(root, id) {
  const files = filesOf(root, id)
  expect(files).toHaveLength(1)
  return files[0]
}

/** Decrypts a file on disk with a record's meta: AES-256-GCM, no associated data. */
function decryptFile(file, meta) {
  const decipher = crypto.createDecipheriv(
    'aes-256-gcm',
    Buffer.from(meta.key, 'base64'),
    Buffer.from(meta.iv, 'base64'),
  )
  decipher.setAuthTag(Buffer.from(meta.tag, 'base64'))
  return Buffer.concat([decipher.update(fs.readFileSync(file)), decipher.final()])
}

/** Checks that a record has the documented shape, and returns it. */
function expectRecordShape(record, { dir = null } = {}) {
  expect(Object.keys(record).sort()).toEqual(['id', 'meta', 'statelessProof', 'token'])
  expect(record.id).toMatch(dir === null ? /^[a-z0-9]+$/ : new RegExp(`^${dir}:[a-z0-9]+$`))
  expect(Object.keys(record.meta).sort()).toEqual(['iv', 'key', 'tag'])
  for (const [field, length] of [
    ['key', 32],
    ['iv', 12],
    ['tag', 16],
  ]) {
    const text = record.meta[field]
    expect(typeof text).toBe('string')
    expect(text).toMatch(BASE64_PADDED)
    expect(Buffer.from(text, 'base64')).toHaveLength(length)
    // Standard base64 with padding: re-encoding gives the very same text.
    expect(Buffer.from(text, 'base64').toString('base64')).toBe(text)
  }
  expect(Number.isSafeInteger(record.token)).toBe(true)
  expect(typeof record.statelessProof).toBe('string')
  expect(record.statelessProof.length).toBeGreaterThan(0)
  return record
}

/** Runs `work` and checks that the token it gives was taken while it ran. */
async function timed(work) {
  const before = Date.now()
  const record = await work()
  const after = Date.now()
  expect(record.token).toBeGreaterThanOrEqual(before)
  expect(record.token).toBeLessThanOrEqual(after)
  return { record, before, after }
}

async function expectPixstoreError(promise, code, message) {
  let caught
  try {
    await promise
  } catch (err) {
    caught = err
  }
  expect(caught).toBeInstanceOf(PixstoreError)
  expect(caught).toMatchObject({ name: 'PixstoreError', code })
  if (message !== undefined) expect(caught.message).toBe(message)
  return caught
}

// Node 20 has no node:sqlite; the sqlite3 command-line shell reads the table (.ci/run installs
// it where it is missing).

function sqlite(database, ...statements) {
  const out = spawnSync('sqlite3', ['-json', database, ...statements], { encoding: 'utf8' })
  if (out.status !== 0) throw new Error(`sqlite3 failed: ${out.stderr}`)
  return out.stdout.trim() === '' ? [] : JSON.parse(out.stdout)
}

function syncError(work) {
  try {
    work()
  } catch (err) {
    return err
  }
  throw new Error('expected the call to throw')
}

// Every store folder this file makes, removed at the end.
const made = []
function newStore(extra) {
  const created = freshStore(extra)
  made.push(created.dir)
  return created
}

const main = newStore()
const root = main.config.imageRootDir

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
  initPixstoreBackend(main.config)
})

afterAll(async () => {
  await closePixstoreBackend()
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
})

describe('initPixstoreBackend', () => {
  test('returns undefined synchronously and creates the image root', () => {
    const store = newStore()
    expect(fs.existsSync(store.config.imageRootDir)).toBe(false)
    expect(initPixstoreBackend(store.config)).toBeUndefined()
    expect(fs.statSync(store.config.imageRootDir).isDirectory()).toBe(true)
    expect(fs.existsSync(store.config.databasePath)).toBe(true)
    initPixstoreBackend(main.config)
  })

  test('calling it again reconfigures: a new folder and database are used', async () => {
    const original = await saveImage(asset('1-pixel.png'))
    const other = newStore()
    const otherRoot = other.config.imageRootDir

    initPixstoreBackend(other.config)
    // The other store has its own database: the first store's image is not in it.
    expect(getImageRecord(original.id)).toBeNull()
    expect(await imageExists(original.id)).toBe(false)

    const moved = await saveImage(asset('1-pixel.webp'), 'elsewhere')
    expect(filesOf(otherRoot, moved.id)).toHaveLength(1)
    expect(filesOf(root, moved.id)).toHaveLength(0)
    expect(encryptedFiles(otherRoot)).toHaveLength(1)

    // And back: the first store holds its image again and never saw the other one.
    initPixstoreBackend(main.config)
    expect(getImageRecord(original.id)).toMatchObject({ id: original.id, token: original.token })
    expect((await readImage(original.id)).equals(asset('1-pixel.png'))).toBe(true)
    expect(getImageRecord(moved.id)).toBeNull()
  })

  test('re-init changes the allowed formats', async () => {
    const gif = asset('vilnius-800.gif')
    await expectPixstoreError(saveImage(gif), 'INVALID_IMAGE', 'Invalid image file')

    initPixstoreBackend({ ...main.config, imageFormats: ['gif'] })
    const record = await saveImage(gif)
    expect(decryptFile(onlyFileOf(root, record.id), record.meta)[0]).toBe(1)
    // ...and PNG, no longer listed, is now refused.
    await expectPixstoreError(saveImage(asset('1-pixel.png')), 'INVALID_IMAGE')

    initPixstoreBackend(main.config)
    await expectPixstoreError(saveImage(gif), 'INVALID_IMAGE')
    // The GIF saved meanwhile is still readable: the format list only governs new writes.
    expect((await readImage(record.id)).equals(gif)).toBe(true)
  })
})

describe('saveImage', () => {
  test('returns a record of the documented shape with a fresh token and a time-based id', async () => {
    const { record, before, after } = await timed(() => saveImage(asset('1-pixel.png')))
    expectRecordShape(record)
    // KEY = the time in milliseconds in base 36, then eight random base-36 characters.
    const [, key] = splitId(record.id)
    const millis = parseInt(key.slice(0, -8), 36)
    expect(millis).toBeGreaterThanOrEqual(before)
    expect(millis).toBeLessThanOrEqual(after)
    expect(key.slice(-8)).toMatch(/^[a-z0-9]{8}$/)
  })

  test('every save gets a new id, key and IV', async () => {
    const png = asset('1-pixel.png')
    const records = []
    for (let i = 0; i < 5; i++) records.push(await saveImage(png))
    expect(new Set(records.map((r) => r.id)).size).toBe(5)
    expect(new Set(records.map((r) => r.meta.key)).size).toBe(5)
    expect(new Set(records.map((r) => r.meta.iv)).size).toBe(5)
  })

  test.each(DEFAULT_FORMAT_PHOTOS)(
    'default formats: %s round-trips byte for byte with format byte of %s',
    async (name, format) => {
      const original = asset(name)
      const record = expectRecordShape(await saveImage(original))

      const read = await readImage(record.id)
      expect(Buffer.isBuffer(read)).toBe(true)
      expect(read.equals(original)).toBe(true)

      // The file holds only the ciphertext of the format byte and the image (no IV, no tag).
      const file = onlyFileOf(root, record.id)
      expect(path.dirname(file)).toBe(root)
      expect(fs.statSync(file).size).toBe(original.length + 1)
      const plain = decryptFile(file, record.meta)
      const defaults = ['png', 'webp', 'jpg', 'jpeg']
      expect(plain[0]).toBe(1 + defaults.indexOf(format))
      expect(plain.subarray(1).equals(original)).toBe(true)
    },
  )

  test('the default format bytes are PNG 1, WebP 2, JPEG 3', async () => {
    const bytes = {}
    for (const name of ['1-pixel.png', '1-pixel.webp', 'thumb-64.jpg']) {
      const record = await saveImage(asset(name))
      bytes[name] = decryptFile(onlyFileOf(root, record.id), record.meta)[0]
    }
    expect(bytes).toEqual({ '1-pixel.png': 1, '1-pixel.webp': 2, 'thumb-64.jpg': 3 })
  })

  test('accepts a Uint8Array view and stores exactly its bytes', async () => {
    const png = asset('1-pixel.png')
    const padded = new Uint8Array(png.length + 20).fill(0xee)
    padded.set(png, 7)
    const view = padded.subarray(7, 7 + png.length)
    expect(Buffer.isBuffer(view)).toBe(false)

    const record = await saveImage(view)
    expect((await readImage(record.id)).equals(png)).toBe(true)
  })

  test('with a dir: id DIR:KEY and the file under <root>/DIR/', async () => {
    const original = asset('thumb-64.jpg')
    const record = expectRecordShape(await saveImage(original, 'avatars'), { dir: 'avatars' })
    const [dir, key] = splitId(record.id)
    expect(dir).toBe('avatars')

    const file = onlyFileOf(root, record.id)
    expect(path.dirname(file)).toBe(path.join(root, 'avatars'))
    expect(path.basename(file).startsWith(`${key}.`)).toBe(true)
    expect(path.basename(file).endsWith('.pixstore-image')).toBe(true)
    expect((await readImage(record.id)).equals(original)).toBe(true)
  })

  test.each([
    ['  My Photos! ', 'myphotos'],
    ['Ab_C-9', 'ab_c-9'],
    ['ÉTÉ 2024', 't2024'],
    ['../../etc', 'etc'],
    ['a/b\\c', 'abc'],
  ])('dir %j is cleaned to %j, and the file stays inside the root', async (raw, cleaned) => {
    const record = await saveImage(asset('1-pixel.png'), raw)
    expect(record.id).toMatch(new RegExp(`^${cleaned}:[a-z0-9]+$`))
    const file = onlyFileOf(root, record.id)
    expect(path.dirname(file)).toBe(path.join(root, cleaned))
    expect(getImageRecord(record.id)).toMatchObject({ id: record.id })
  })

  test.each(['!!!', '   ', '../..', '/', 'ÄÖÜ'])(
    'a dir with nothing usable (%j) is INVALID_ARGUMENT and writes nothing',
    async (dir) => {
      const before = encryptedFiles(root)
      await expectPixstoreError(saveImage(asset('1-pixel.png'), dir), 'INVALID_ARGUMENT')
      await expectPixstoreError(
        saveImageFromFile(assetPath('1-pixel.png'), dir),
        'INVALID_ARGUMENT',
      )
      expect(encryptedFiles(root)).toEqual(before)
    },
  )
})

describe('every photo format when imageFormats configures it', () => {
  const extended = newStore({ imageFormats: EXTENDED_FORMATS })
  const reordered = ['gif', 'tiff', 'png', 'jpg', 'webp', 'bmp', 'avif']
  const shuffled = newStore({ imageFormats: reordered })

  afterAll(() => initPixstoreBackend(main.config))

  test.each(PHOTOS)('%s (%s) round-trips with its format byte', async (name, format) => {
    initPixstoreBackend(extended.config)
    const extRoot = extended.config.imageRootDir
    const original = asset(name)
    const record = expectRecordShape(await saveImage(original, 'photos'), { dir: 'photos' })
    expect((await readImage(record.id)).equals(original)).toBe(true)
    const plain = decryptFile(onlyFileOf(extRoot, record.id), record.meta)
    expect(plain[0]).toBe(1 + EXTENDED_FORMATS.indexOf(format))
    expect(plain.subarray(1).equals(original)).toBe(true)

    // The same image from its file, under a configuration listing the formats in another
    // order: the byte follows the order.
    initPixstoreBackend(shuffled.config)
    const fromFile = await saveImageFromFile(assetPath(name))
    const shuffledPlain = decryptFile(
      onlyFileOf(shuffled.config.imageRootDir, fromFile.id),
      fromFile.meta,
    )
    expect(shuffledPlain[0]).toBe(1 + reordered.indexOf(format))
    expect(shuffledPlain.subarray(1).equals(original)).toBe(true)
    expect((await readImage(fromFile.id)).equals(original)).toBe(true)
  })
})

describe('saveImageFromFile', () => {
  test('reads the file and saves it as saveImage does', async () => {
    const { record } = await timed(() => saveImageFromFile(assetPath('vilnius.jpg')))
    expectRecordShape(record)
    const original = asset('vilnius.jpg')
    expect((await readImage(record.id)).equals(original)).toBe(true)
    const plain = decryptFile(onlyFileOf(root, record.id), record.meta)
    expect(plain[0]).toBe(3)
    expect(plain.subarray(1).equals(original)).toBe(true)
  })

  test('with a dir', async () => {
    const record = await saveImageFromFile(assetPath('vilnius-800.webp'), ' Gallery ')
    expectRecordShape(record, { dir: 'gallery' })
    expect(path.dirname(onlyFileOf(root, record.id))).toBe(path.join(root, 'gallery'))
    expect((await readImage(record.id)).equals(asset('vilnius-800.webp'))).toBe(true)
  })

  test('a relative path resolves against the working directory', async () => {
    const relative = path.relative(process.cwd(), assetPath('1-pixel.webp'))
    expect(path.isAbsolute(relative)).toBe(false)
    const record = await saveImageFromFile(relative)
    expect((await readImage(record.id)).equals(asset('1-pixel.webp'))).toBe(true)
  })
})

describe('updateImage and updateImageFromFile', () => {
  test('updateImage: new key, IV, file and a larger token; the old file is gone', async () => {
    const first = await saveImage(asset('1-pixel.png'), 'upd')
    const firstFile = onlyFileOf(root, first.id)

    const { record: updated } = await timed(() => updateImage(first.id, asset('thumb-64.jpg')))
    expectRecordShape(updated, { dir: 'upd' })
    expect(updated.id).toBe(first.id)
    expect(updated.token).toBeGreaterThan(first.token)
    expect(updated.meta.key).not.toBe(first.meta.key)
    expect(updated.meta.iv).not.toBe(first.meta.iv)

    const file = onlyFileOf(root, first.id)
    expect(file).not.toBe(firstFile)
    expect(fs.existsSync(firstFile)).toBe(false)
    const plain = decryptFile(file, updated.meta)
    expect(plain[0]).toBe(3)
    expect(plain.subarray(1).equals(asset('thumb-64.jpg'))).toBe(true)
    // The old meta does not open the new file.
    expect(() => decryptFile(file, first.meta)).toThrow()

    expect((await readImage(first.id)).equals(asset('thumb-64.jpg'))).toBe(true)
    expect(getImageRecord(first.id)).toMatchObject({ id: first.id, token: updated.token })
    expect(getImageRecord(first.id).meta).toEqual(updated.meta)
  })

  test('updateImageFromFile replaces the image with the file content', async () => {
    const first = await saveImage(asset('1-pixel.webp'))
    const updated = await updateImageFromFile(first.id, assetPath('vilnius-800.png'))
    expectRecordShape(updated)
    expect(updated.id).toBe(first.id)
    expect(updated.token).toBeGreaterThan(first.token)
    expect(updated.meta.key).not.toBe(first.meta.key)
    const plain = decryptFile(onlyFileOf(root, first.id), updated.meta)
    expect(plain[0]).toBe(1)
    expect(plain.subarray(1).equals(asset('vilnius-800.png'))).toBe(true)
    expect((await readImage(first.id)).equals(asset('vilnius-800.png'))).toBe(true)
  })

  test('20 updates in a row with no delay: tokens strictly increase, one file remains', async () => {
    const images = [asset('1-pixel.png'), asset('1-pixel.webp')]
    const first = await saveImage(images[0], 'burst')
    const tokens = [first.token]
    for (let i = 0; i < 20; i++) {
      const updated = await updateImage(first.id, images[(i + 1) % 2])
      tokens.push(updated.token)
      expect(getImageRecord(first.id).token).toBe(updated.token)
    }
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThan(tokens[i - 1])
    expect(filesOf(root, first.id)).toHaveLength(1)
    // 20 updates: the last wrote images[20 % 2] = the PNG.
    expect((await readImage(first.id)).equals(images[0])).toBe(true)
  })

  test('20 concurrent updates of one id: distinct tokens, the record matches its one file', async () => {
    const png = asset('1-pixel.png')
    const webp = asset('1-pixel.webp')
    const first = await saveImage(png, 'concurrent')
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => updateImage(first.id, i % 2 ? png : webp)),
    )
    const tokens = results.map((r) => r.token)
    expect(new Set(tokens).size).toBe(20)
    for (const token of tokens) expect(token).toBeGreaterThan(first.token)

    const record = getImageRecord(first.id)
    expect(record.token).toBe(Math.max(...tokens))
    const winner = results.find((r) => r.token === record.token)
    expect(record.meta).toEqual(winner.meta)
    const plain = decryptFile(onlyFileOf(root, first.id), record.meta)
    const read = await readImage(first.id)
    expect(plain.subarray(1).equals(read)).toBe(true)
    expect(read.equals(png) || read.equals(webp)).toBe(true)
  })

  test('update of a missing id: NOT_FOUND with the message "Image not found: <id>"', async () => {
    const before = encryptedFiles(root)
    for (const id of ['nosuchimage', 'cats:nosuchimage']) {
      await expectPixstoreError(
        updateImage(id, asset('1-pixel.png')),
        'NOT_FOUND',
        `Image not found: ${id}`,
      )
      await expectPixstoreError(
        updateImageFromFile(id, assetPath('1-pixel.png')),
        'NOT_FOUND',
        `Image not found: ${id}`,
      )
      expect(getImageRecord(id)).toBeNull()
    }
    expect(encryptedFiles(root)).toEqual(before)
  })

  test('update of a deleted id is NOT_FOUND and leaves no file', async () => {
    const record = await saveImage(asset('1-pixel.png'), 'gone')
    expect(await deleteImage(record.id)).toBe(true)
    await expectPixstoreError(
      updateImage(record.id, asset('1-pixel.png')),
      'NOT_FOUND',
      `Image not found: ${record.id}`,
    )
    expect(filesOf(root, record.id)).toEqual([])
    expect(await imageExists(record.id)).toBe(false)
  })
})

describe('deleteImage, imageExists, readImage, getImageRecord', () => {
  test('deleteImage returns true, then false; the file and the record are gone', async () => {
    const record = await saveImage(asset('1-pixel.webp'), 'del')
    expect(filesOf(root, record.id)).toHaveLength(1)
    expect(await imageExists(record.id)).toBe(true)

    expect(await deleteImage(record.id)).toBe(true)
    expect(filesOf(root, record.id)).toEqual([])
    expect(await imageExists(record.id)).toBe(false)
    expect(await readImage(record.id)).toBeNull()
    expect(getImageRecord(record.id)).toBeNull()

    expect(await deleteImage(record.id)).toBe(false)
  })

  test('deleting one image leaves the others alone', async () => {
    const keep = await saveImage(asset('1-pixel.png'), 'pair')
    const drop = await saveImage(asset('1-pixel.webp'), 'pair')
    expect(await deleteImage(drop.id)).toBe(true)
    expect(onlyFileOf(root, keep.id)).toBeTruthy()
    expect((await readImage(keep.id)).equals(asset('1-pixel.png'))).toBe(true)
  })

  test('missing ids: imageExists false, readImage null, getImageRecord null, deleteImage false', async () => {
    for (const id of ['nosuchimage', 'dir:nosuchimage']) {
      expect(await imageExists(id)).toBe(false)
      expect(await readImage(id)).toBeNull()
      expect(getImageRecord(id)).toBeNull()
      expect(await deleteImage(id)).toBe(false)
    }
  })

  test('getImageRecord is synchronous and matches what the save returned', async () => {
    const saved = await saveImage(asset('thumb-64.jpg'), 'sync')
    const record = getImageRecord(saved.id)
    expect(record).not.toBeInstanceOf(Promise)
    expectRecordShape(record, { dir: 'sync' })
    expect(record).toMatchObject({ id: saved.id, token: saved.token, meta: saved.meta })
  })

  test('readImage returns a Buffer of the original bytes', async () => {
    const original = asset('antalya.jpg')
    const record = await saveImage(original)
    const read = await readImage(record.id)
    expect(Buffer.isBuffer(read)).toBe(true)
    expect(read.length).toBe(original.length)
    expect(read.equals(original)).toBe(true)
  })
})

describe('the database', () => {
  test('image_records(id, token, meta) holds the token and the meta JSON {"key","iv","tag"}', async () => {
    const db = main.config.databasePath
    const columns = sqlite(
      db,
      'SELECT name, type, "notnull", pk FROM pragma_table_info(\'image_records\')',
    )
    expect(columns.slice(0, 3)).toEqual([
      { name: 'id', type: 'TEXT', notnull: 0, pk: 1 },
      { name: 'token', type: 'INTEGER', notnull: 1, pk: 0 },
      { name: 'meta', type: 'TEXT', notnull: 1, pk: 0 },
    ])

    const row = (id) =>
      sqlite(
        db,
        `SELECT id, token, typeof(token) AS type, meta FROM image_records WHERE id = '${id}'`,
      )
    const saved = await saveImage(asset('1-pixel.png'), 'db')
    const [inserted] = row(saved.id)
    expect(inserted).toMatchObject({ id: saved.id, token: saved.token, type: 'integer' })
    // The exact JSON text, keys in 3.x's order.
    expect(inserted.meta).toBe(JSON.stringify(saved.meta))
    expect(Object.keys(JSON.parse(inserted.meta))).toEqual(['key', 'iv', 'tag'])

    const updated = await updateImage(saved.id, asset('1-pixel.webp'))
    const [upserted] = row(saved.id)
    expect(upserted).toMatchObject({ token: updated.token })
    expect(JSON.parse(upserted.meta)).toEqual(updated.meta)
    expect(row(saved.id)).toHaveLength(1)

    await deleteImage(saved.id)
    expect(row(saved.id)).toEqual([])
  })
})

describe('closePixstoreBackend and calls without an open store', () => {
  afterAll(() => initPixstoreBackend(main.config))

  test('every function fails with NOT_INITIALIZED after closePixstoreBackend', async () => {
    const record = await saveImage(asset('1-pixel.png'))
    expect(await closePixstoreBackend()).toBeUndefined()
    // Closing twice is fine.
    expect(await closePixstoreBackend()).toBeUndefined()

    const png = asset('1-pixel.png')
    const calls = [
      saveImage(png),
      saveImage(png, 'dir'),
      saveImageFromFile(assetPath('1-pixel.png')),
      updateImage(record.id, png),
      updateImageFromFile(record.id, assetPath('1-pixel.png')),
      deleteImage(record.id),
      imageExists(record.id),
      readImage(record.id),
    ]
    // Every call settles at once; all of them are awaited together so none rejects unobserved.
    await Promise.all(calls.map((call) => expectPixstoreError(call, 'NOT_INITIALIZED')))
    expect(syncError(() => getImageRecord(record.id))).toMatchObject({
      name: 'PixstoreError',
      code: 'NOT_INITIALIZED',
    })

    // Nothing was done while closed: the image is intact after opening again.
    initPixstoreBackend(main.config)
    expect(getImageRecord(record.id)).toMatchObject({ id: record.id, token: record.token })
    expect((await readImage(record.id)).equals(png)).toBe(true)
    expect(filesOf(root, record.id)).toHaveLength(1)
  })

  test('with no store open and a fresh module state (as before any init): NOT_INITIALIZED', async () => {
    await closePixstoreBackend()
    let fresh
    jest.isolateModules(() => {
      fresh = {
        backend: require('pixstore/backend'),
        shared: require('pixstore/shared'),
      }
    })
    // A fresh module state has the default 'hybrid' mode: warned, remembered, result null.
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => {})
    try {
      expect(fresh.shared.getLastPixstoreError()).toBeNull()
      expect(await fresh.backend.saveImage(asset('1-pixel.png'))).toBeNull()
      expect(warn).toHaveBeenCalledTimes(1)
      const err = fresh.shared.getLastPixstoreError()
      expect(err).toBeInstanceOf(fresh.shared.PixstoreError)
      expect(err).toMatchObject({ name: 'PixstoreError', code: 'NOT_INITIALIZED' })
      expect(warn).toHaveBeenCalledWith(err)
      expect(fresh.backend.getImageRecord('abc')).toBeNull()
      expect(fresh.shared.getLastPixstoreError()).toMatchObject({ code: 'NOT_INITIALIZED' })
    } finally {
      warn.mockRestore()
    }
  })

  test('closePixstoreBackend waits for a call already under way', async () => {
    initPixstoreBackend(main.config)
    // The save has reached the store before the close is asked for: the large photo takes
    // far longer than the pause to encrypt and write.
    const original = asset('antalya.jpg')
    const saving = saveImage(original)
    await new Promise((resolve) => setTimeout(resolve, 100))
    await closePixstoreBackend()
    const record = await saving
    expectRecordShape(record)

    initPixstoreBackend(main.config)
    expect((await readImage(record.id)).equals(original)).toBe(true)
  })
})
