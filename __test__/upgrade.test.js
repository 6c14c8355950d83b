// Stores written by pixstore 3.2.1 (the committed fixture, made by scripts/make-3x-fixture.mjs)
// open, serve and keep working, and the upgrade that brings our columns in is atomic.

const { execFileSync, spawn, spawnSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const {
  closePixstoreBackend,
  customEndpointHelper,
  deleteImage,
  getImageRecord,
  imageExists,
  initPixstoreBackend,
  readImage,
  saveImage,
  updateImage,
} = require('pixstore/backend')
const {
  FIXTURE,
  legacyFile,
  readManifest,
  writeLegacyStore,
} = require('../scripts/legacy-store.js')
const { asset, freePort, JsonLines } = require('./helpers.js')

const manifest = readManifest()

/**
 * Runs pixstore 3.2.1's own browser module (fixtures/interop-frontend.mjs, a fresh IndexedDB)
 * against our default endpoint and fetches `records` through it, in order.
 */
async function fetchWith3xBrowser(port, records) {
  const child = spawn(
    process.execPath,
    [
      path.join(__dirname, 'fixtures', 'interop-frontend.mjs'),
      JSON.stringify({
        frontendConfig: {
          defaultEndpointConnectHost: '127.0.0.1',
          defaultEndpointConnectPort: port,
        },
      }),
    ],
    { cwd: path.join(__dirname, '..'), stdio: ['pipe', 'pipe', 'inherit'] },
  )
  const lines = new JsonLines(child.stdout)
  await lines.next('ready', 15_000)
  const results = []
  for (const record of records) {
    child.stdin.write(`${JSON.stringify({ op: 'getImage', record })}\n`)
    results.push(await lines.next('result', 20_000))
  }
  child.stdin.end()
  await new Promise((resolve) => child.on('exit', resolve))
  return results
}

/** A copy of the fixture, grown by `extra` copies of its images. */
function copyOfFixture(extra = 0) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-3x-'))
  const { config, images } = writeLegacyStore(dir, extra)
  return {
    dir,
    images,
    config: { ...config, defaultEndpointEnabled: false, errorHandlingMode: 'throw' },
  }
}

function sqlite(database, sql) {
  return execFileSync('sqlite3', [database, sql], { encoding: 'utf8' }).trim()
}

/** Every file under a folder with its bytes, for before/after comparisons. */
function snapshot(dir) {
  return fs
    .readdirSync(dir, { recursive: true })
    .filter((name) => fs.statSync(path.join(dir, name)).isFile())
    .sort()
    .map((name) => [name, fs.readFileSync(path.join(dir, name)).toString('base64')])
}

async function expectEveryImageIntact(images) {
  for (const image of images) {
    const bytes = await readImage(image.id)
    expect({ id: image.id, same: bytes !== null && bytes.equals(asset(image.asset)) }).toEqual({
      id: image.id,
      same: true,
    })
    expect(await imageExists(image.id)).toBe(true)
  }
}

beforeAll(() => closePixstoreBackend())
afterEach(() => closePixstoreBackend())

test('the fixture really is a 3.x store: three columns, no file versions', () => {
  const db = path.join(FIXTURE, 'pixstore.sqlite')
  expect(sqlite(db, "SELECT group_concat(name) FROM pragma_table_info('image_records')")).toBe(
    'id,token,meta',
  )
  expect(manifest.images.length).toBeGreaterThanOrEqual(5)
  expect(new Set(manifest.images.map((i) => i.id.split(':')[0])).size).toBeGreaterThanOrEqual(3)
})

test('every image 3.x wrote reads back byte for byte, with its token, and no file moves', async () => {
  const store = copyOfFixture()
  const before = snapshot(store.config.imageRootDir)
  initPixstoreBackend(store.config)

  await expectEveryImageIntact(manifest.images)
  for (const image of manifest.images) {
    expect(getImageRecord(image.id)).toMatchObject({ id: image.id, token: image.token })
  }
  for (const id of manifest.deleted) {
    expect(await readImage(id)).toBeNull()
    expect(await imageExists(id)).toBe(false)
  }

  await closePixstoreBackend()
  const after = snapshot(store.config.imageRootDir).filter(([name]) => !name.startsWith('.'))
  expect(after).toEqual(before)
})

test('old ids update and delete, new images live beside them, and all survive a reopen', async () => {
  const store = copyOfFixture()
  initPixstoreBackend(store.config)
  const [kept, replaced, removed] = manifest.images
  const oldFile = legacyFile(store.config.imageRootDir, replaced.id)
  expect(fs.existsSync(oldFile)).toBe(true)

  const updated = await updateImage(replaced.id, asset('vilnius-800.webp'))
  expect(updated.token).toBeGreaterThan(replaced.token)
  expect(fs.existsSync(oldFile)).toBe(false)
  expect(await deleteImage(removed.id)).toBe(true)
  const added = await saveImage(asset('1-pixel.png'), replaced.id.includes(':') ? 'trips' : 'x')

  const expected = manifest.images
    .filter((image) => image.id !== removed.id)
    .map((image) => (image.id === replaced.id ? { ...image, asset: 'vilnius-800.webp' } : image))
    .concat([{ id: added.id, asset: '1-pixel.png' }])

  await closePixstoreBackend()
  initPixstoreBackend(store.config)
  await expectEveryImageIntact(expected)
  expect(await readImage(removed.id)).toBeNull()
  expect(getImageRecord(kept.id)).toMatchObject({ token: kept.token })
  expect(getImageRecord(replaced.id)).toMatchObject({ token: updated.token })
})

test('the upgrade adds a column and a table, once, and is idempotent', async () => {
  const store = copyOfFixture()
  const db = store.config.databasePath
  for (let round = 0; round < 3; round++) {
    initPixstoreBackend(store.config)
    await closePixstoreBackend()
  }
  expect(sqlite(db, "SELECT group_concat(name) FROM pragma_table_info('image_records')")).toBe(
    'id,token,meta,file_version',
  )
  expect(sqlite(db, "SELECT value FROM pixstore_meta WHERE name = 'schema_version'")).toBe('1')
  expect(sqlite(db, 'SELECT count(*) FROM image_records WHERE file_version IS NULL')).toBe(
    String(manifest.images.length),
  )
})

test('both serving paths serve images 3.x wrote', async () => {
  const store = copyOfFixture()
  initPixstoreBackend(store.config)
  for (const image of manifest.images) {
    const record = getImageRecord(image.id)
    const payload = Buffer.from(
      await customEndpointHelper(image.id, undefined, record.statelessProof),
    )
    expect(payload[0]).toBe(1)
    expect(payload.readBigUInt64LE(1)).toBe(BigInt(image.token))
    const [key, iv, tag] = [
      payload.subarray(9, 41),
      payload.subarray(41, 53),
      payload.subarray(53, 69),
    ]
    const decipher = crypto.createDecipheriv('aes-256-gcm', key, iv)
    decipher.setAuthTag(tag)
    const plain = Buffer.concat([decipher.update(payload.subarray(69)), decipher.final()])
    expect(plain.subarray(1).equals(asset(image.asset))).toBe(true)

    const current = await customEndpointHelper(image.id, image.token, record.statelessProof)
    expect(Buffer.from(current).subarray(1).equals(payload.subarray(69))).toBe(true)
    expect(current[0]).toBe(0)
  }
})

test('the real 3.x browser module fetches and decrypts images 3.x wrote, from our endpoint', async () => {
  const store = copyOfFixture()
  const port = await freePort()
  initPixstoreBackend({
    ...store.config,
    defaultEndpointEnabled: true,
    defaultEndpointListenHost: '127.0.0.1',
    defaultEndpointListenPort: port,
  })
  const records = manifest.images.map((image) => getImageRecord(image.id))
  const results = await fetchWith3xBrowser(port, records)
  results.forEach((result, i) => {
    const image = manifest.images[i]
    expect({ id: image.id, ok: result.ok, requests: result.requests.length }).toEqual({
      id: image.id,
      ok: true,
      requests: 1,
    })
    expect(Buffer.from(result.base64, 'base64').equals(asset(image.asset))).toBe(true)
  })
}, 60_000)

test('killed at random moments while opening a 3.x store, the upgrade completes next time', async () => {
  const store = copyOfFixture(2000)
  const child = path.join(__dirname, 'fixtures', 'upgrade-open.js')
  let killedBeforeOpen = 0
  for (let round = 0; round < 12; round++) {
    const proc = spawn(process.execPath, [child, JSON.stringify(store.config)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const exited = new Promise((resolve) => proc.on('exit', resolve))
    let opened = false
    proc.stdout.on('data', (chunk) => (opened ||= chunk.toString().includes('opened')))
    await new Promise((resolve) => proc.on('spawn', resolve))
    await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 100))
    proc.kill('SIGKILL')
    await exited
    if (!opened) killedBeforeOpen += 1
  }
  expect(killedBeforeOpen).toBeGreaterThan(0)

  initPixstoreBackend(store.config)
  expect(sqlite(store.config.databasePath, 'SELECT count(*) FROM image_records')).toBe(
    String(manifest.images.length + 2000),
  )
  await expectEveryImageIntact(store.images.filter((_, i) => i % 97 === 0))
}, 120_000)

describe('a database that is not a Pixstore store is refused and left as it was', () => {
  const cases = {
    'another SQLite file': (db) =>
      sqlite(db, 'CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)'),
    'an image_records table with other columns': (db) =>
      sqlite(db, 'CREATE TABLE image_records(id TEXT PRIMARY KEY, url TEXT)'),
    'a store of a newer schema': (db) =>
      sqlite(
        db,
        `CREATE TABLE image_records(id TEXT PRIMARY KEY, token INTEGER NOT NULL, meta TEXT NOT NULL,
           file_version TEXT);
         CREATE TABLE pixstore_meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);
         INSERT INTO pixstore_meta VALUES ('schema_version', 99);`,
      ),
    'a file that is not SQLite': (db) => fs.writeFileSync(db, crypto.randomBytes(4096)),
  }

  test.each(Object.keys(cases))('%s', (name) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-foreign-'))
    const databasePath = path.join(dir, 'app.sqlite')
    cases[name](databasePath)
    const before = snapshot(dir)

    let caught
    try {
      initPixstoreBackend({
        databasePath,
        imageRootDir: path.join(dir, 'images'),
        defaultEndpointEnabled: false,
      })
    } catch (err) {
      caught = err
    }
    expect(caught).toMatchObject({ name: 'PixstoreError', code: 'INCOMPATIBLE_STORE' })
    expect(caught.message).toContain(databasePath)
    expect(snapshot(dir).filter(([file]) => !file.startsWith('images'))).toEqual(before)
  })
})

test('`pixstore downgrade` gives every file 3.x name, so 3.x layout holds again', async () => {
  const store = copyOfFixture()
  initPixstoreBackend(store.config)
  const [old] = manifest.images
  await updateImage(old.id, asset('vilnius-800.webp'))
  const added = await saveImage(asset('thumb-64.jpg'), 'trips')
  await closePixstoreBackend()
  const db = store.config.databasePath
  expect(sqlite(db, 'SELECT count(*) FROM image_records WHERE file_version IS NOT NULL')).toBe('2')

  const cli = path.join(__dirname, '..', 'bin', 'pixstore.js')
  const out = execFileSync(
    process.execPath,
    [cli, 'downgrade', '--database', db, '--images', store.config.imageRootDir],
    { encoding: 'utf8' },
  )
  expect(out).toMatch(/^Gave 2 file\(s\) pixstore 3\.x's name in \d+ ms\.\npixstore 3\.x can open/)
  expect(sqlite(db, 'SELECT count(*) FROM image_records WHERE file_version IS NOT NULL')).toBe('0')

  // Each record's 3.x file decrypts under its meta, and no versioned file is left.
  const expected = new Map(manifest.images.map((image) => [image.id, image.asset]))
  expected.set(old.id, 'vilnius-800.webp').set(added.id, 'thumb-64.jpg')
  for (const line of sqlite(db, 'SELECT id, meta FROM image_records').split('\n')) {
    const [id, meta] = [
      line.slice(0, line.indexOf('|')),
      JSON.parse(line.slice(line.indexOf('|') + 1)),
    ]
    const file = legacyFile(store.config.imageRootDir, id)
    const decipher = crypto.createDecipheriv(
      'aes-256-gcm',
      Buffer.from(meta.key, 'base64'),
      Buffer.from(meta.iv, 'base64'),
    )
    decipher.setAuthTag(Buffer.from(meta.tag, 'base64'))
    const plain = Buffer.concat([decipher.update(fs.readFileSync(file)), decipher.final()])
    expect({ id, same: plain.subarray(1).equals(asset(expected.get(id))) }).toEqual({
      id,
      same: true,
    })
  }
  const names = snapshot(store.config.imageRootDir).map(([name]) => path.basename(name))
  expect(names.filter((name) => /\..+\.pixstore-image$/.test(name))).toEqual([])

  // And this version still opens it.
  initPixstoreBackend(store.config)
  await expectEveryImageIntact([...expected].map(([id, name]) => ({ id, asset: name })))
})

test('`pixstore downgrade` refuses a missing database and a store in use, and reports a missing file', async () => {
  const store = copyOfFixture()
  const cli = path.join(__dirname, '..', 'bin', 'pixstore.js')
  const run = (...args) =>
    spawnSync(process.execPath, [cli, 'downgrade', ...args], { encoding: 'utf8' })
  const args = ['--database', store.config.databasePath, '--images', store.config.imageRootDir]

  const typo = run(
    '--database',
    path.join(store.dir, 'typo.sqlite'),
    '--images',
    store.config.imageRootDir,
  )
  expect(typo.status).toBe(1)
  expect(typo.stderr).toContain('no database at')
  expect(fs.existsSync(path.join(store.dir, 'typo.sqlite'))).toBe(false)

  initPixstoreBackend(store.config)
  const [first, second] = manifest.images
  await updateImage(first.id, asset('1-pixel.png'))
  await updateImage(second.id, asset('1-pixel.webp'))
  const busy = run(...args)
  expect(busy.status).toBe(1)
  expect(busy.stderr).toContain('STORE_IN_USE')
  await closePixstoreBackend()

  // One versioned file goes missing: the other is still renamed, the missing one reported.
  const versioned = snapshot(store.config.imageRootDir)
    .map(([name]) => name)
    .filter((name) => /\..+\.pixstore-image$/.test(name))
  expect(versioned).toHaveLength(2)
  fs.rmSync(path.join(store.config.imageRootDir, versioned[0]))
  const partial = run(...args)
  expect(partial.status).toBe(1)
  expect(partial.stdout).toContain('Gave 1 file(s)')
  expect(partial.stderr).toContain('1 image(s) kept their version')
})
