'use strict'

// Bad input: every non-image in assets/, formats that are not allowed, unreadable files and
// ids that try to climb out of the image root. Each is refused with its code and leaves the
// store, and everything around it, exactly as it was.

const fs = require('node:fs')
const path = require('node:path')

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
} = require('pixstore/backend')
const { PixstoreError } = require('pixstore/shared')
const { asset, assetPath, freshStore, encryptedFiles } = require('./helpers.js')

const BAD_INPUTS = [
  'empty.bin',
  'not-an-image.txt',
  'random-4k.bin',
  'truncated-jpeg.jpg',
  'gif-magic-only.gif',
  'script.svg',
]
const EVERY_FORMAT = ['png', 'webp', 'jpg', 'jpeg', 'gif', 'avif', 'bmp', 'tiff']

// Every store folder this file makes, removed at the end.
const made = []
function newStore(extra) {
  const created = freshStore(extra)
  made.push(created.dir)
  return created
}

/** Every entry under a folder, relative to it, sorted: files, folders, lock files. */
function listing(folder) {
  if (!fs.existsSync(folder)) return []
  return fs.readdirSync(folder, { recursive: true }).sort()
}

async function expectRejected(promise, code) {
  let caught
  try {
    await promise
  } catch (err) {
    caught = err
  }
  expect(caught).toBeInstanceOf(PixstoreError)
  expect(caught).toMatchObject({ name: 'PixstoreError', code })
  return caught
}

function expectThrown(work, code) {
  let caught
  try {
    work()
  } catch (err) {
    caught = err
  }
  expect(caught).toBeInstanceOf(PixstoreError)
  expect(caught).toMatchObject({ name: 'PixstoreError', code })
  return caught
}

/**
 * Saves an image to check against, and returns a function that asserts the store is exactly as
 * it was then: the same entries under the image root, the same record, the same bytes.
 */
async function keptImage(root, name = 'thumb-64.jpg') {
  const original = asset(name)
  const record = await saveImage(original, 'kept')
  const entries = listing(root)
  const files = encryptedFiles(root)
  return {
    record,
    async expectUnchanged() {
      expect(listing(root)).toEqual(entries)
      expect(encryptedFiles(root)).toEqual(files)
      const now = getImageRecord(record.id)
      expect(now).toMatchObject({ id: record.id, token: record.token, meta: record.meta })
      expect((await readImage(record.id)).equals(original)).toBe(true)
    },
  }
}

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
})

afterAll(async () => {
  await closePixstoreBackend()
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
})

describe.each([
  ['the default formats', undefined],
  ['every format configured, gif included', EVERY_FORMAT],
])('non-images, with %s', (_label, imageFormats) => {
  const store = newStore(imageFormats ? { imageFormats } : {})
  const root = store.config.imageRootDir
  let kept

  beforeAll(async () => {
    initPixstoreBackend(store.config)
    kept = await keptImage(root)
  })

  test.each(BAD_INPUTS)(
    '%s is INVALID_IMAGE through every save and update, and nothing changes',
    async (name) => {
      const bytes = asset(name)
      const file = assetPath(name)
      const calls = [
        () => saveImage(bytes),
        () => saveImage(bytes, 'newdir'),
        () => saveImage(new Uint8Array(bytes)),
        () => saveImageFromFile(file),
        () => saveImageFromFile(file, 'newdir'),
        () => updateImage(kept.record.id, bytes),
        () => updateImageFromFile(kept.record.id, file),
      ]
      for (const call of calls) {
        const err = await expectRejected(call(), 'INVALID_IMAGE')
        expect(err.message).toBe('Invalid image file')
      }
      // Not even the folder of the refused dir was made.
      expect(fs.existsSync(path.join(root, 'newdir'))).toBe(false)
      await kept.expectUnchanged()
    },
  )

  test('the content decides, not the file name', async () => {
    const fake = path.join(store.dir, 'looks-like.png')
    fs.copyFileSync(assetPath('not-an-image.txt'), fake)
    await expectRejected(saveImageFromFile(fake), 'INVALID_IMAGE')
    await expectRejected(updateImageFromFile(kept.record.id, fake), 'INVALID_IMAGE')
    await kept.expectUnchanged()

    // ...and a real PNG under another extension is a PNG.
    const png = path.join(store.dir, 'really-a-png.txt')
    fs.copyFileSync(assetPath('1-pixel.png'), png)
    const record = await saveImageFromFile(png)
    expect((await readImage(record.id)).equals(asset('1-pixel.png'))).toBe(true)
    expect(await deleteImage(record.id)).toBe(true)
  })
})

describe('formats that are not in imageFormats', () => {
  const store = newStore()
  const root = store.config.imageRootDir

  test.each(['vilnius-800.gif', 'vilnius-800.avif', 'vilnius-800.bmp', 'vilnius-800.tiff'])(
    'with the defaults, the real photo %s is INVALID_IMAGE everywhere',
    async (name) => {
      initPixstoreBackend(store.config)
      const kept = await keptImage(root)
      for (const call of [
        () => saveImage(asset(name)),
        () => saveImageFromFile(assetPath(name), 'photos'),
        () => updateImage(kept.record.id, asset(name)),
        () => updateImageFromFile(kept.record.id, assetPath(name)),
      ]) {
        const err = await expectRejected(call(), 'INVALID_IMAGE')
        expect(err.message).toBe('Invalid image file')
      }
      await kept.expectUnchanged()
    },
  )

  test("with imageFormats ['png'], JPEG and WebP photos are refused and PNG accepted", async () => {
    initPixstoreBackend({ ...store.config, imageFormats: ['png'] })
    const kept = await keptImage(root, '1-pixel.png')
    for (const name of ['thumb-64.jpg', 'vilnius.jpg', '1-pixel.webp', 'vilnius-800.webp']) {
      await expectRejected(saveImage(asset(name)), 'INVALID_IMAGE')
      await expectRejected(updateImage(kept.record.id, asset(name)), 'INVALID_IMAGE')
    }
    await kept.expectUnchanged()
    const record = await saveImage(asset('vilnius-800.png'))
    expect((await readImage(record.id)).equals(asset('vilnius-800.png'))).toBe(true)
  })
})

describe('files that cannot be read', () => {
  const store = newStore()
  const root = store.config.imageRootDir
  let kept

  beforeAll(async () => {
    initPixstoreBackend(store.config)
    kept = await keptImage(root)
  })

  test.each([
    ['a missing file', () => path.join(store.dir, 'no-such-file.png')],
    ['a missing folder', () => path.join(store.dir, 'no-such-folder', 'x.png')],
    ['a directory', () => path.join(store.dir)],
    ['the assets directory', () => path.dirname(assetPath('1-pixel.png'))],
    // The part before the NUL is a real image: the path must not be cut there.
    ['a path with a NUL byte', () => `${assetPath('1-pixel.png')}\u0000.txt`],
    ['an empty path', () => ''],
  ])('%s is FILE_NOT_READABLE, and nothing changes', async (_label, makePath) => {
    const filePath = makePath()
    await expectRejected(saveImageFromFile(filePath), 'FILE_NOT_READABLE')
    await expectRejected(saveImageFromFile(filePath, 'newdir'), 'FILE_NOT_READABLE')
    await expectRejected(updateImageFromFile(kept.record.id, filePath), 'FILE_NOT_READABLE')
    expect(fs.existsSync(path.join(root, 'newdir'))).toBe(false)
    await kept.expectUnchanged()
  })
})

describe('ids that try to escape the image root', () => {
  const store = newStore()
  const root = store.config.imageRootDir
  const outside = store.dir

  // Where pixstore 3.x would have put (or removed) the file of some of these ids.
  const SENTINELS = {
    'victim.pixstore-image': 'victim bytes',
    'x.pixstore-image': 'x bytes',
    'etc.pixstore-image': 'etc bytes',
    'etc/passwd.pixstore-image': 'root:x:0:0',
  }

  const ATTACK_IDS = [
    '..',
    '.',
    '../x',
    '../victim',
    '../etc/passwd',
    'a:../../etc',
    'a:../../victim',
    '..:victim',
    '/etc/passwd',
    `${outside}/victim`,
    'a/b',
    'a\\b',
    'a\u0000b',
    'a:b:c',
    ':',
    'a:',
    ':a',
    'A',
    'Kept:abc',
    'ключ',
    'a b',
    'a'.repeat(500),
    '',
  ]

  let kept

  /** A stable, short test title for an id. */
  function label(id) {
    if (id.startsWith(outside)) return JSON.stringify(`<tmp>${id.slice(outside.length)}`)
    if (id.length > 30) return `${JSON.stringify(id.slice(0, 10))}… (${id.length} characters)`
    return JSON.stringify(id)
  }

  /** Everything outside the image root, except the database, with its bytes. */
  function outsideSnapshot() {
    const entries = {}
    for (const name of listing(outside)) {
      if (name === 'images' || name.startsWith(`images${path.sep}`)) continue
      if (name.startsWith('store.sqlite')) continue
      const full = path.join(outside, name)
      entries[name] = fs.statSync(full).isFile() ? fs.readFileSync(full, 'utf8') : 'folder'
    }
    return entries
  }

  beforeAll(async () => {
    fs.mkdirSync(path.join(outside, 'etc'))
    for (const [name, content] of Object.entries(SENTINELS)) {
      fs.writeFileSync(path.join(outside, name), content)
    }
    initPixstoreBackend(store.config)
    kept = await keptImage(root)
  })

  test('the sentinels are where a climbing id would reach', () => {
    // The layout this test relies on: the image root is a folder of the sentinels' folder.
    expect(path.dirname(root)).toBe(outside)
    expect(outsideSnapshot()).toEqual({ ...SENTINELS, etc: 'folder' })
  })

  test.each(ATTACK_IDS.map((id) => [label(id), id]))(
    'id %s is INVALID_ID for every id-taking function, and touches nothing',
    async (_label, id) => {
      const before = outsideSnapshot()
      const png = asset('1-pixel.png')

      const calls = [
        () => updateImage(id, png),
        () => updateImageFromFile(id, assetPath('1-pixel.png')),
        () => deleteImage(id),
        () => imageExists(id),
        () => readImage(id),
      ]
      for (const call of calls) await expectRejected(call(), 'INVALID_ID')
      expectThrown(() => getImageRecord(id), 'INVALID_ID')

      expect(outsideSnapshot()).toEqual(before)
      expect(outsideSnapshot()).toEqual({ ...SENTINELS, etc: 'folder' })
      expect(fs.existsSync('/etc/passwd.pixstore-image')).toBe(false)
      await kept.expectUnchanged()
    },
  )

  test('the INVALID_ID message names the id, and cuts a long one short', async () => {
    const err = await expectRejected(readImage('../victim'), 'INVALID_ID')
    expect(err.message).toContain('"../victim"')
    const long = await expectRejected(readImage('a'.repeat(500)), 'INVALID_ID')
    expect(long.message.length).toBeLessThan(400)
  })

  test('a well-formed id near a sentinel name only looks inside the root', async () => {
    // "victim" is a valid id: it names <root>/victim..., never <root>/../victim....
    expect(await imageExists('victim')).toBe(false)
    expect(await readImage('victim')).toBeNull()
    expect(await deleteImage('victim')).toBe(false)
    expect(await deleteImage('etc:passwd')).toBe(false)
    expect(outsideSnapshot()).toEqual({ ...SENTINELS, etc: 'folder' })
  })
})
