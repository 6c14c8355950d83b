'use strict'

// Faults of the disk and the database, each of which must leave every other image intact and
// readable: a full disk during a save or update (a child under RLIMIT_FSIZE), a read-only image
// root, a database locked by another process beyond the busy timeout, a corrupted database file,
// and an image file that vanishes or changes under its record. Each fault has its own error code;
// no fault may leave a file or a record behind, or cost an image.

const { spawn, execFileSync } = require('node:child_process')
const { createHash } = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  updateImage,
  deleteImage,
  imageExists,
  readImage,
  getImageRecord,
  customEndpointHelper,
  verifyStore,
} = require('pixstore/backend')
const {
  asset,
  freshStore,
  encryptedFileOf,
  freePort,
  httpRequest,
  imagePath,
  runNode,
  WIRE,
} = require('./helpers.js')

const CHILD = path.join(__dirname, 'fixtures', 'fault-child.js')
const CLI = path.join(__dirname, '..', 'bin', 'pixstore.js')
const BUSY_TIMEOUT = 300
const CORRUPT_ADVICE = 'the database file is damaged; restore it from a backup'
const WRITE = 'Could not write the encrypted file'

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')

/** Byte-for-byte equality, by length and hash: Jest's toEqual walks a megabyte for seconds. */
function expectSameBytes(actual, expected) {
  expect(actual).toBeInstanceOf(Uint8Array)
  expect({ length: actual.length, sha256: sha256(actual) }).toEqual({
    length: expected.length,
    sha256: sha256(expected),
  })
}

const stores = []

/** A fresh store folder, removed in afterAll. */
function newStore(extra) {
  const store = freshStore(extra)
  stores.push(store)
  return store
}

beforeAll(async () => {
  // The native store is process-wide: start from a closed one, whatever ran before.
  await closePixstoreBackend()
})

afterAll(async () => {
  await closePixstoreBackend()
  for (const { dir } of stores) fs.rmSync(dir, { recursive: true, force: true })
})

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

/** Saves assets into a store and closes it: `[{ id, token, meta, bytes }]`, in order. */
async function seed(config, images) {
  initPixstoreBackend(config)
  const saved = []
  for (const [name, dir] of images) {
    const bytes = asset(name)
    const { id, token, meta } = await saveImage(bytes, dir)
    saved.push({ id, token, meta, bytes })
  }
  await closePixstoreBackend()
  return saved
}

/**
 * Every file under the image root outside its control folder (.pixstore), relative path to
 * sha256: what "byte-identical" compares.
 */
function snapshot(root) {
  const files = {}
  for (const name of fs.readdirSync(root, { recursive: true }).sort()) {
    const full = path.join(root, name)
    if (name.split(path.sep)[0] === '.pixstore' || !fs.statSync(full).isFile()) continue
    files[name] = sha256(fs.readFileSync(full))
  }
  return files
}

/** The image root and every folder in it, with their modes. */
function folderModes(root) {
  const modes = new Map([[root, fs.statSync(root).mode & 0o7777]])
  for (const name of fs.readdirSync(root, { recursive: true })) {
    const full = path.join(root, name)
    if (fs.statSync(full).isDirectory()) modes.set(full, fs.statSync(full).mode & 0o7777)
  }
  return modes
}

/** The sqlite3 shell's output for `sql`, one row a line. */
function sqlite(databasePath, sql) {
  const out = execFileSync('sqlite3', [databasePath, sql], { encoding: 'utf8' })
  return out.split('\n').filter(Boolean)
}

const recordIds = (databasePath) => sqlite(databasePath, 'SELECT id FROM image_records ORDER BY id')

/**
 * Runs fault-child.js with `steps`, behind `wrapper` (a command and its arguments, such as
 * prlimit); resolves `{ code, signal, steps, stderr }` with the steps' JSON lines.
 */
function runChild(config, steps, wrapper = []) {
  return new Promise((resolve, reject) => {
    const command = [...wrapper, process.execPath, CHILD, JSON.stringify({ config, steps })]
    const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk) => (stdout += chunk))
    child.stderr.on('data', (chunk) => (stderr += chunk))
    child.on('error', reject)
    child.on('close', (code, signal) => {
      const lines = stdout.split('\n').filter(Boolean)
      resolve({ code, signal, steps: lines.map((line) => JSON.parse(line)), stderr })
    })
  })
}

/** `pixstore verify` on a store: exit code, stdout with the run time blanked, stderr. */
async function cliVerify(config, ...flags) {
  const args = ['verify', '--database', config.databasePath, '--images', config.imageRootDir]
  const { code, stdout, stderr, timedOut } = await runNode(CLI, [...args, ...flags])
  expect(timedOut).toBe(false)
  return { code, stdout: stdout.replace(/ in \d+\.\d s:/, ' in N s:'), stderr }
}

/** Overwrites `length` bytes of a file at `offset` with 0xa5. */
function clobber(file, offset, length) {
  const fd = fs.openSync(file, 'r+')
  try {
    fs.writeSync(fd, Buffer.alloc(length, 0xa5), 0, length, offset)
  } finally {
    fs.closeSync(fd)
  }
}

/** The pages of a table or index, in order, with the database's page size. */
function pagesOf(databasePath, name) {
  const pageSize = Number(sqlite(databasePath, 'PRAGMA page_size')[0])
  const pages = sqlite(
    databasePath,
    `SELECT pageno FROM dbstat WHERE name = '${name}' AND pagetype = 'leaf' ORDER BY pageno`,
  ).map(Number)
  return { pageSize, pages }
}

const keyOf = (id) => id.slice(id.indexOf(':') + 1)
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** The key of a new id, unknown before the call, as a pattern. */
const NEW_KEY = '[0-9a-z_-]+'

/**
 * A message about an encrypted file, `<head> <folder>/<key>.<writer>-<n>.pixstore-image: <tail>`:
 * `key` is the id's key, or NEW_KEY.
 */
function fileMessage(head, folder, key, tail) {
  const name = `${key === NEW_KEY ? key : escape(key)}\\.[0-9a-z]{10}-[0-9a-f]+\\.pixstore-image`
  return expect.stringMatching(
    new RegExp(`^${escape(head)} ${escape(folder)}/${name}: ${escape(tail)}$`),
  )
}

/** A copy of one image's file under a new key, from a writer this store never had: an orphan. */
function plantOrphan(root, id) {
  const orphan = path.join(root, 'orphanimage0001.deadwriter-1.pixstore-image')
  fs.copyFileSync(encryptedFileOf(root, id), orphan)
  return orphan
}

describe('the disk fills up (a child under RLIMIT_FSIZE)', () => {
  const LIMIT = 1_000_000

  test('a save or update larger than the space left: STORAGE_FULL, no file or record left, the old image kept', async () => {
    const big = asset('antalya.jpg')
    const fits = asset('vilnius.jpg')
    expect([big.length > LIMIT + 1, fits.length + 1 < LIMIT]).toEqual([true, true])

    const { config } = newStore()
    const root = config.imageRootDir
    const [a, b, c] = await seed(config, [
      ['1-pixel.png', 'keep'],
      ['vilnius-800.webp', 'keep'],
      ['thumb-64.jpg', undefined],
    ])
    expect(fs.statSync(config.databasePath).size).toBeLessThan(LIMIT)
    const before = snapshot(root)

    const child = await runChild(
      config,
      [
        { op: 'init' },
        { op: 'save', asset: 'antalya.jpg' },
        { op: 'saveFromFile', asset: 'antalya.jpg', dir: 'keep' },
        { op: 'update', id: b.id, asset: 'antalya.jpg' },
        { op: 'updateFromFile', id: b.id, asset: 'antalya.jpg' },
        { op: 'read', id: b.id },
        { op: 'record', id: b.id },
        { op: 'save', asset: '1-pixel.png' },
        { op: 'update', id: c.id, asset: '1-pixel.webp' },
        { op: 'save', asset: 'vilnius.jpg', dir: 'keep' },
        { op: 'close' },
      ],
      ['prlimit', `--fsize=${LIMIT}`, '--'],
    )
    expect([child.code, child.signal, child.stderr]).toEqual([0, null, ''])
    const full = (folder, key) => ({
      ok: false,
      code: 'STORAGE_FULL',
      message: fileMessage(WRITE, folder, key, 'File too large (os error 27)'),
    })
    expect(child.steps).toEqual([
      { type: 'step', op: 'init', ok: true, value: null },
      { type: 'step', op: 'save', ...full(root, NEW_KEY) },
      { type: 'step', op: 'saveFromFile', ...full(`${root}/keep`, NEW_KEY) },
      { type: 'step', op: 'update', ...full(`${root}/keep`, keyOf(b.id)) },
      { type: 'step', op: 'updateFromFile', ...full(`${root}/keep`, keyOf(b.id)) },
      { type: 'step', op: 'read', ok: true, value: sha256(b.bytes) },
      { type: 'step', op: 'record', ok: true, value: { token: b.token, meta: b.meta } },
      { type: 'step', op: 'save', ok: true, value: expect.any(String) },
      { type: 'step', op: 'update', ok: true, value: expect.any(Number) },
      { type: 'step', op: 'save', ok: true, value: expect.stringMatching(/^keep:/) },
      { type: 'step', op: 'close', ok: true, value: null },
    ])
    const d = child.steps[7].value
    const e = child.steps[9].value

    // Exactly the images that were written: no record and no file of the failed writes.
    expect(recordIds(config.databasePath)).toEqual([a.id, b.id, c.id, d, e].sort())
    const after = snapshot(root)
    expect(Object.keys(after)).toHaveLength(5)
    for (const id of [a.id, b.id]) {
      const file = path.relative(root, encryptedFileOf(root, id))
      expect(after[file]).toBe(before[file])
    }

    initPixstoreBackend(config)
    expect(getImageRecord(b.id)).toMatchObject({ id: b.id, token: b.token, meta: b.meta })
    expectSameBytes(await readImage(a.id), a.bytes)
    expectSameBytes(await readImage(b.id), b.bytes)
    expectSameBytes(await readImage(c.id), asset('1-pixel.webp'))
    expectSameBytes(await readImage(d), asset('1-pixel.png'))
    expectSameBytes(await readImage(e), fits)
    await closePixstoreBackend()
  })

  test('a commit that cannot grow the database: STORAGE_FULL, no file or record left', async () => {
    const { config } = newStore()
    const [b] = await seed(config, [['vilnius-800.webp', undefined]])
    // Room for a few WAL frames (4,120 bytes each) beyond the database: the images fit, the
    // records' commits soon do not.
    const limit = fs.statSync(config.databasePath).size + 12_288
    const before = snapshot(config.imageRootDir)

    const child = await runChild(
      config,
      [
        { op: 'init' },
        { op: 'saveUntilFailure', asset: '1-pixel.png', max: 100 },
        { op: 'update', id: b.id, asset: '1-pixel.png' },
        { op: 'read', id: b.id },
        { op: 'close' },
      ],
      ['prlimit', `--fsize=${limit}`, '--'],
    )
    expect([child.code, child.signal, child.stderr]).toEqual([0, null, ''])
    const [init, saves, update, read] = child.steps
    expect([init.ok, saves.ok, update.ok, read]).toEqual([
      true,
      false,
      false,
      { type: 'step', op: 'read', ok: true, value: sha256(b.bytes) },
    ])
    const saved = saves.saved

    // The images committed before the limit, and nothing of the failed save and update.
    expect(recordIds(config.databasePath)).toEqual([b.id, ...saved].sort())
    const after = snapshot(config.imageRootDir)
    expect(Object.keys(after)).toHaveLength(1 + saved.length)
    const bFile = path.relative(config.imageRootDir, encryptedFileOf(config.imageRootDir, b.id))
    expect(after[bFile]).toBe(before[bFile])
    initPixstoreBackend(config)
    expect(getImageRecord(b.id)).toMatchObject({ token: b.token, meta: b.meta })
    expectSameBytes(await readImage(b.id), b.bytes)
    for (const id of saved) expectSameBytes(await readImage(id), asset('1-pixel.png'))
    await closePixstoreBackend()

    // The disk is full: the same code as a full disk under an image file.
    expect([saves.code, saves.message]).toEqual(['STORAGE_FULL', expect.any(String)])
    expect([update.code, update.message]).toEqual(['STORAGE_FULL', expect.any(String)])
  })
})

describe('the image root becomes read-only', () => {
  // Root's DAC override ignores permission bits: the child runs without it.
  const wrapper =
    process.getuid() === 0
      ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search,-fowner', '--']
      : []

  test('saves and updates fail with STORAGE_READ_ONLY; reads go on; nothing is lost', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const [a, b, c] = await seed(config, [
      ['1-pixel.png', undefined],
      ['vilnius-800.webp', 'keep'],
      ['thumb-64.jpg', 'keep'],
    ])
    const before = snapshot(root)
    const modes = folderModes(root)

    let opening
    let running
    try {
      opening = await runChild(
        config,
        [{ op: 'chmodRoot', mode: 0o500 }, { op: 'init' }, { op: 'chmodRoot', mode: 0o700 }],
        wrapper,
      )
      running = await runChild(
        config,
        [
          { op: 'init' },
          { op: 'chmodRoot', mode: 0o500 },
          { op: 'save', asset: '1-pixel.png' },
          { op: 'save', asset: '1-pixel.png', dir: 'keep' },
          { op: 'save', asset: '1-pixel.png', dir: 'new' },
          { op: 'saveFromFile', asset: 'vilnius.jpg', dir: 'keep' },
          { op: 'update', id: b.id, asset: '1-pixel.png' },
          { op: 'updateFromFile', id: b.id, asset: 'vilnius.jpg' },
          { op: 'read', id: b.id },
          { op: 'record', id: b.id },
          { op: 'read', id: a.id },
          { op: 'delete', id: c.id },
          { op: 'close' },
        ],
        wrapper,
      )
    } finally {
      for (const [folder, mode] of modes) fs.chmodSync(folder, mode)
    }

    expect([opening.code, opening.stderr, running.code, running.stderr]).toEqual([0, '', 0, ''])
    const lock = `${root}/.pixstore/writers/[0-9a-z]{10}\\.lock`
    expect(opening.steps[1]).toEqual({
      type: 'step',
      op: 'init',
      ok: false,
      code: 'STORAGE_READ_ONLY',
      message: expect.stringMatching(
        new RegExp(
          `^Could not register a writer lock at ${lock}: Permission denied \\(os error 13\\)$`,
        ),
      ),
    })

    const denied = (folder, key) => ({
      ok: false,
      code: 'STORAGE_READ_ONLY',
      message: fileMessage(WRITE, folder, key, 'Permission denied (os error 13)'),
    })
    expect(running.steps).toEqual([
      { type: 'step', op: 'init', ok: true, value: null },
      { type: 'step', op: 'chmodRoot', ok: true, value: null },
      { type: 'step', op: 'save', ...denied(root, NEW_KEY) },
      { type: 'step', op: 'save', ...denied(`${root}/keep`, NEW_KEY) },
      {
        type: 'step',
        op: 'save',
        ok: false,
        code: 'STORAGE_READ_ONLY',
        message: `Could not create the folder ${root}/new: Permission denied (os error 13)`,
      },
      { type: 'step', op: 'saveFromFile', ...denied(`${root}/keep`, NEW_KEY) },
      { type: 'step', op: 'update', ...denied(`${root}/keep`, keyOf(b.id)) },
      { type: 'step', op: 'updateFromFile', ...denied(`${root}/keep`, keyOf(b.id)) },
      { type: 'step', op: 'read', ok: true, value: sha256(b.bytes) },
      { type: 'step', op: 'record', ok: true, value: { token: b.token, meta: b.meta } },
      { type: 'step', op: 'read', ok: true, value: sha256(a.bytes) },
      // The record goes at once; the file waits for the root to be writable again.
      { type: 'step', op: 'delete', ok: true, value: true },
      { type: 'step', op: 'close', ok: true, value: null },
    ])

    // Not a file was added or removed while the root was read-only.
    expect(snapshot(root)).toEqual(before)
    expect(recordIds(config.databasePath)).toEqual([a.id, b.id].sort())

    // Writable again: the next start removes the deleted image's file, and only that.
    initPixstoreBackend(config)
    expect(getImageRecord(b.id)).toMatchObject({ token: b.token, meta: b.meta })
    expectSameBytes(await readImage(a.id), a.bytes)
    expectSameBytes(await readImage(b.id), b.bytes)
    expect(getImageRecord(c.id)).toBeNull()
    await closePixstoreBackend()
    const cFile = Object.keys(before).find((name) => name.startsWith(`keep/${keyOf(c.id)}.`))
    const { [cFile]: _removed, ...kept } = before
    expect(snapshot(root)).toEqual(kept)
  })
  test('a database file this process may only read: STORAGE_READ_ONLY at init, nothing left beside it', async () => {
    const { config } = newStore()
    const [a] = await seed(config, [['vilnius-800.webp', undefined]])
    const folder = path.dirname(config.databasePath)
    const beside = () => fs.readdirSync(folder).sort()
    const files = beside()
    const database = fs.readFileSync(config.databasePath)

    let opening
    try {
      fs.chmodSync(config.databasePath, 0o400)
      opening = await runChild(config, [{ op: 'init' }], wrapper)
    } finally {
      fs.chmodSync(config.databasePath, 0o600)
    }

    expect([opening.code, opening.stderr]).toEqual([0, ''])
    expect(opening.steps).toEqual([
      {
        type: 'step',
        op: 'init',
        ok: false,
        code: 'STORAGE_READ_ONLY',
        message:
          `Could not open the database ${config.databasePath}: this process may read the file ` +
          'but not write it (check its mode and owner)',
      },
    ])
    // No -wal or -shm was made (a read-only -shm would keep failing the store after the fix).
    expect(beside()).toEqual(files)
    expect(fs.readFileSync(config.databasePath).equals(database)).toBe(true)

    // Writable again: the store opens and the image is there.
    const again = await runChild(config, [{ op: 'init' }, { op: 'read', id: a.id }], wrapper)
    expect(again.steps.map(({ op, ok, value }) => [op, ok, value])).toEqual([
      ['init', true, null],
      ['read', true, sha256(a.bytes)],
    ])
  })
})

describe('the database is locked by another process', () => {
  /** A sqlite3 shell holding `BEGIN EXCLUSIVE` on the database until `release()`. */
  async function holdLock(databasePath) {
    const shell = spawn('sqlite3', [databasePath], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    shell.stdout.on('data', (chunk) => (out += chunk))
    shell.stderr.on('data', (chunk) => (err += chunk))
    const closed = new Promise((resolve) => shell.on('close', resolve))
    const until = async (word) => {
      while (!out.includes(word)) {
        if (shell.exitCode !== null || err !== '') throw new Error(`sqlite3 failed: ${err}`)
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
    }
    shell.stdin.write(".timeout 5000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")
    await until('locked')
    return {
      async release() {
        shell.stdin.end("COMMIT;\nSELECT 'released';\n")
        await until('released')
        expect([await closed, err]).toEqual([0, ''])
      },
      kill: () => shell.exitCode === null && shell.kill(),
    }
  }

  /** The error of a call and how long it took to fail. */
  async function timedRejection(promise) {
    const started = Date.now()
    const err = await rejection(promise)
    return { err, ms: Date.now() - started }
  }

  test('writes fail with DATABASE_BUSY after databaseBusyTimeout, reads go on, and it all works once released', async () => {
    const { config } = newStore({ databaseBusyTimeout: BUSY_TIMEOUT })
    const root = config.imageRootDir
    const [a, b, c] = await seed(config, [
      ['1-pixel.png', undefined],
      ['vilnius-800.webp', 'keep'],
      ['thumb-64.jpg', 'keep'],
    ])
    initPixstoreBackend(config)
    const before = snapshot(root)

    const lock = await holdLock(config.databasePath)
    let busy
    try {
      busy = [
        await timedRejection(saveImage(asset('1-pixel.png'))),
        await timedRejection(updateImage(b.id, asset('1-pixel.png'))),
        await timedRejection(deleteImage(c.id)),
      ]
      expectSameBytes(await readImage(b.id), b.bytes)
      expect(getImageRecord(b.id)).toMatchObject({ token: b.token, meta: b.meta })
      expect(await imageExists(c.id)).toBe(true)
      expect(snapshot(root)).toEqual(before)

      // A re-init cannot open the locked database; the open store stays open.
      const reinit = thrown(() => initPixstoreBackend(config))
      expect([reinit.code, reinit.message]).toEqual([
        'DATABASE_BUSY',
        `Could not open the database ${config.databasePath}: database is locked: another ` +
          'process held the database locked for longer than databaseBusyTimeout',
      ])
      expectSameBytes(await readImage(a.id), a.bytes)
      await lock.release()
    } finally {
      lock.kill()
    }

    const commitBusy =
      'Could not commit the records: database is locked: another process held the database ' +
      'locked for longer than databaseBusyTimeout'
    for (const { err, ms } of busy) {
      expect([err.name, err.code, err.message]).toEqual([
        'PixstoreError',
        'DATABASE_BUSY',
        commitBusy,
      ])
      expect(ms).toBeGreaterThanOrEqual(BUSY_TIMEOUT - 20)
      expect(ms).toBeLessThan(BUSY_TIMEOUT + 3000)
    }

    // Released: the same calls succeed.
    const d = await saveImage(asset('1-pixel.png'))
    const updated = await updateImage(b.id, asset('1-pixel.webp'))
    expect(updated.token).toBeGreaterThan(b.token)
    expect(await deleteImage(c.id)).toBe(true)
    expectSameBytes(await readImage(d.id), asset('1-pixel.png'))
    expectSameBytes(await readImage(b.id), asset('1-pixel.webp'))
    await closePixstoreBackend()

    expect(recordIds(config.databasePath)).toEqual([a.id, b.id, d.id].sort())
    const files = Object.keys(snapshot(root))
    expect(files).toEqual(
      [a.id, b.id, d.id].map((id) => path.relative(root, encryptedFileOf(root, id))).sort(),
    )
  })
})

describe('the database file is corrupted', () => {
  /** Saves `count` copies of the 1-pixel PNG at once; closes the store; their ids. */
  async function seedMany(config, count) {
    initPixstoreBackend(config)
    const png = asset('1-pixel.png')
    const records = await Promise.all(Array.from({ length: count }, () => saveImage(png)))
    await closePixstoreBackend()
    return records.map((record) => record.id)
  }

  test('a damaged page of records: DATABASE_CORRUPT for the records on it, the others readable, no file removed', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const db = config.databasePath

    // A writer killed after its saves stays registered, dead: the start-up sweep may remove the
    // files of such a writer that no record names, so a sweep trusting a damaged database
    // would remove images here.
    const child = await runChild(config, [
      { op: 'init' },
      { op: 'saveUntilFailure', asset: '1-pixel.png', max: 80 },
      { op: 'kill' },
    ])
    expect([child.signal, child.steps.map((step) => step.ok)]).toEqual(['SIGKILL', [true, true]])
    const ids = child.steps[1].value
    expect(sqlite(db, 'PRAGMA wal_checkpoint(TRUNCATE)')).toEqual(['0|0|0'])
    expect(sqlite(db, 'SELECT count(*) FROM pixstore_writers')).toEqual(['1'])

    const { pageSize, pages } = pagesOf(db, 'image_records')
    expect(pages.length).toBeGreaterThanOrEqual(3)
    const page = pages[1]
    const pageBytes = fs.readFileSync(db).subarray((page - 1) * pageSize, page * pageSize)
    const onPage = ids.filter((id) => pageBytes.includes(Buffer.from(id)))
    expect([onPage.length > 2, onPage.length < ids.length]).toEqual([true, true])
    const before = snapshot(root)
    expect(Object.keys(before)).toHaveLength(80)
    clobber(db, (page - 1) * pageSize, pageSize)

    // Opening reads the schema, not this page: the calls that need the page fail.
    initPixstoreBackend(config)
    const corrupt = (id) =>
      `DATABASE_CORRUPT: Could not read the record of ${id}: database disk image is malformed: ` +
      CORRUPT_ADVICE
    const found = {}
    for (const id of ids) {
      try {
        found[id] = getImageRecord(id).id
      } catch (err) {
        found[id] = `${err.code}: ${err.message}`
      }
    }
    expect(found).toEqual(
      Object.fromEntries(ids.map((id) => [id, onPage.includes(id) ? corrupt(id) : id])),
    )
    const readFailure = await rejection(readImage(onPage[0]))
    expect(`${readFailure.code}: ${readFailure.message}`).toBe(corrupt(onPage[0]))
    const updateFailure = await rejection(updateImage(onPage[1], asset('1-pixel.webp')))
    expect(`${updateFailure.code}: ${updateFailure.message}`).toBe(corrupt(onPage[1]))
    const deleteFailure = await rejection(deleteImage(onPage[2]))
    expect([deleteFailure.code, deleteFailure.message]).toEqual([
      'DATABASE_CORRUPT',
      `Could not commit the records: database disk image is malformed: ${CORRUPT_ADVICE}`,
    ])
    const png = asset('1-pixel.png')
    for (const id of ids.filter((id) => !onPage.includes(id))) {
      expectSameBytes(await readImage(id), png)
    }

    // close waits for the start-up sweep: it must have removed nothing.
    await closePixstoreBackend()
    expect(snapshot(root)).toEqual(before)
  })

  test('a damaged header: DATABASE_CORRUPT at init; a file that is not SQLite: INCOMPATIBLE_STORE; both left as they were', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const db = config.databasePath
    const ids = await seedMany(config, 30)
    const before = snapshot(root)
    // A failed open leaves no -wal or -shm beside the database, and no writer lock.
    const leftBehind = () => [
      fs.readdirSync(path.dirname(db)).filter((name) => name.startsWith(`${path.basename(db)}-`)),
      fs.readdirSync(path.join(root, '.pixstore', 'writers')),
    ]

    // Everything after the 16-byte magic of the 100-byte header.
    clobber(db, 16, 84)
    const damaged = fs.readFileSync(db)
    const opening = thrown(() => initPixstoreBackend(config))
    expect([opening.name, opening.code, opening.message]).toEqual([
      'PixstoreError',
      'DATABASE_CORRUPT',
      `Could not open the database ${db}: file is not a database: ${CORRUPT_ADVICE}`,
    ])
    expectSameBytes(fs.readFileSync(db), damaged)
    expect(leftBehind()).toEqual([[], []])
    expect(snapshot(root)).toEqual(before)
    expect((await rejection(readImage(ids[0]))).code).toBe('NOT_INITIALIZED')

    const notes = 'Shopping list: milk, bread, a new disk\n'
    fs.writeFileSync(db, notes)
    const foreign = thrown(() => initPixstoreBackend(config))
    expect([foreign.name, foreign.code, foreign.message]).toEqual([
      'PixstoreError',
      'INCOMPATIBLE_STORE',
      `The database ${db} is not a SQLite file. It was left unchanged; point databasePath at a ` +
        'Pixstore database or a new file',
    ])
    expect(fs.readFileSync(db, 'utf8')).toBe(notes)
    expect(leftBehind()).toEqual([[], []])
    expect(snapshot(root)).toEqual(before)
  })

  test('verify with a damaged page no record lives on: the problem is listed, --repair keeps the orphan', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const db = config.databasePath
    const ids = await seedMany(config, 10)
    const orphan = plantOrphan(root, ids[0])
    const { pageSize, pages } = pagesOf(db, 'pixstore_trash')
    expect(pages).toHaveLength(1)
    clobber(db, (pages[0] - 1) * pageSize, pageSize)
    const before = snapshot(root)
    const problem = `Could not check the database: database disk image is malformed: ${CORRUPT_ADVICE}`

    initPixstoreBackend(config)
    expect(await verifyStore({ repair: true })).toEqual({
      healthy: false,
      records: 10,
      intact: 10,
      missing: [],
      damaged: [],
      orphans: [orphan],
      removed: 0,
      notRemoved: [],
      databaseProblems: [problem],
    })
    await closePixstoreBackend()
    expect(snapshot(root)).toEqual(before)

    expect(await cliVerify(config, '--repair')).toEqual({
      code: 1,
      stdout: [
        'Checked 10 image(s) in N s: 10 intact.',
        `  database      ${problem}`,
        `  orphan        ${orphan}`,
        'Orphans kept: the database is damaged, so they may be images it lost.',
        'The store has problems (listed above).',
        '',
      ].join('\n'),
      stderr: 'checked 10/10 image(s)\n',
    })
    expect(snapshot(root)).toEqual(before)
  })

  test('verify with a damaged page of records: the problem is listed, --repair keeps the orphan', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const db = config.databasePath
    const ids = await seedMany(config, 80)
    const orphan = plantOrphan(root, ids[0])
    const { pageSize, pages } = pagesOf(db, 'image_records')
    clobber(db, (pages[1] - 1) * pageSize, pageSize)
    const before = snapshot(root)

    initPixstoreBackend(config)
    const api = await verifyStore({ repair: true }).catch((err) => `${err.code}: ${err.message}`)
    await closePixstoreBackend()
    const cli = await cliVerify(config, '--repair')

    // Nothing removed: without its records no file can be checked, and none is surely an orphan.
    expect(snapshot(root)).toEqual(before)
    expect(fs.existsSync(orphan)).toBe(true)
    // A damaged database is a problem found (exit 1) with its report, not a check that could
    // not run (exit 2).
    const problem =
      'Could not check the database: database disk image is malformed: the database file is ' +
      'damaged; restore it from a backup'
    expect({ api, cli: cli.code }).toEqual({
      api: {
        healthy: false,
        records: 0,
        intact: 0,
        missing: [],
        damaged: [],
        orphans: [],
        removed: 0,
        notRemoved: [],
        databaseProblems: [problem],
      },
      cli: 1,
    })
    expect(cli.stdout).toBe(
      'Checked 0 image(s) in N s: 0 intact.\n' +
        `  database      ${problem}\n` +
        'The store has problems (listed above).\n',
    )
  })
})

describe('an image file vanishes or changes under its record', () => {
  test('readImage: INTEGRITY_ERROR; the endpoint: InternalError; verify lists both; --repair removes only the orphan', async () => {
    const port = await freePort()
    const { config } = newStore()
    const root = config.imageRootDir
    const [a, b, c, d] = await seed(config, [
      ['1-pixel.png', undefined],
      ['vilnius-800.webp', 'keep'],
      ['thumb-64.jpg', undefined],
      ['vilnius.jpg', 'keep'],
    ])
    const endpoint = {
      ...config,
      defaultEndpointEnabled: true,
      defaultEndpointListenHost: '127.0.0.1',
      defaultEndpointListenPort: port,
    }
    initPixstoreBackend(endpoint)
    const records = Object.fromEntries([a, b, c, d].map(({ id }) => [id, getImageRecord(id)]))

    const bFile = encryptedFileOf(root, b.id)
    fs.rmSync(bFile)
    const cFile = encryptedFileOf(root, c.id)
    const cBytes = fs.readFileSync(cFile)
    cBytes[Math.floor(cBytes.length / 2)] ^= 0x01
    fs.writeFileSync(cFile, cBytes)
    const missing = `The encrypted file of image ${b.id} is missing: ${bFile}`
    const damaged =
      `The encrypted file of image ${c.id} does not decrypt under its record's key: ${cFile} ` +
      'was changed or cut short'

    const failures = []
    for (const id of [b.id, c.id]) {
      const err = await rejection(readImage(id))
      failures.push([err.name, err.code, err.message])
    }
    expect(failures).toEqual([
      ['PixstoreError', 'INTEGRITY_ERROR', missing],
      ['PixstoreError', 'INTEGRITY_ERROR', damaged],
    ])
    expectSameBytes(await readImage(a.id), a.bytes)
    expectSameBytes(await readImage(d.id), d.bytes)
    expect([await imageExists(b.id), await imageExists(c.id)]).toEqual([true, true])

    // The default endpoint, and customEndpointHelper with it off: one byte, InternalError.
    const fetched = async (id) => {
      const { token, statelessProof } = records[id]
      const headers = { 'x-pixstore-proof': statelessProof, 'x-pixstore-token': String(token) }
      const res = await httpRequest(port, imagePath(id), { headers })
      return [res.status, [...res.body.subarray(0, 1)], res.body.length]
    }
    const aFile = fs.readFileSync(encryptedFileOf(root, a.id))
    expect(await fetched(b.id)).toEqual([200, [WIRE.InternalError], 1])
    expect(await fetched(c.id)).toEqual([200, [WIRE.InternalError], 1])
    expect(await fetched(a.id)).toEqual([200, [WIRE.Success], 1 + aFile.length])

    initPixstoreBackend(config)
    const helped = async (id) => {
      const { token, statelessProof } = records[id]
      return Buffer.from(await customEndpointHelper(id, token, statelessProof))
    }
    expect([...(await helped(b.id))]).toEqual([WIRE.InternalError])
    expect([...(await helped(c.id))]).toEqual([WIRE.InternalError])
    expectSameBytes(await helped(a.id), Buffer.concat([Buffer.from([WIRE.Success]), aFile]))

    const progress = []
    const report = {
      healthy: false,
      records: 4,
      intact: 2,
      missing: [{ id: b.id, path: bFile }],
      damaged: [{ id: c.id, reason: damaged }],
      orphans: [],
      removed: 0,
      notRemoved: [],
      databaseProblems: [],
    }
    expect(await verifyStore({ onProgress: (step) => progress.push(step) })).toEqual(report)
    expect(progress).toEqual([{ checked: 4, total: 4 }])
    await closePixstoreBackend()

    const problems = [
      'Checked 4 image(s) in N s: 2 intact.',
      `  missing file  ${b.id}  ${bFile}`,
      `  damaged       ${c.id}  ${damaged}`,
    ]
    const last = 'The store has problems (listed above).'
    const lines = (...body) => [...body, ''].join('\n')
    const stderr = 'checked 4/4 image(s)\n'
    expect(await cliVerify(config)).toEqual({ code: 1, stdout: lines(...problems, last), stderr })

    const orphan = plantOrphan(root, a.id)
    expect(await cliVerify(config)).toEqual({
      code: 1,
      stdout: lines(
        ...problems,
        `  orphan        ${orphan}`,
        'Run again with --repair to remove the orphans.',
        last,
      ),
      stderr,
    })
    const withOrphan = snapshot(root)
    expect(await cliVerify(config, '--repair')).toEqual({
      code: 1,
      stdout: lines(...problems, `  orphan        ${orphan}`, 'Removed 1 orphan file(s).', last),
      stderr,
    })
    const { [path.basename(orphan)]: _removed, ...kept } = withOrphan
    expect(snapshot(root)).toEqual(kept)
    expect(Object.keys(kept)).toHaveLength(3)
    expect(await cliVerify(config, '--repair')).toEqual({
      code: 1,
      stdout: lines(...problems, last),
      stderr,
    })

    initPixstoreBackend(config)
    expect(await verifyStore({ repair: true })).toEqual(report)
    expectSameBytes(await readImage(a.id), a.bytes)
    expectSameBytes(await readImage(d.id), d.bytes)
    await closePixstoreBackend()
  })

  test('verify: a file that cannot be read is listed with its error and the check goes on; a healthy store exits 0, no database exits 2', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const images = await seed(config, [
      ['1-pixel.png', undefined],
      ['thumb-64.jpg', 'keep'],
      ['vilnius-800.webp', undefined],
    ])
    const healthy = {
      healthy: true,
      records: 3,
      intact: 3,
      missing: [],
      damaged: [],
      orphans: [],
      removed: 0,
      notRemoved: [],
      databaseProblems: [],
    }
    initPixstoreBackend(config)
    expect(await verifyStore()).toEqual(healthy)
    await closePixstoreBackend()
    const lines = (...body) => [...body, ''].join('\n')
    expect(await cliVerify(config)).toEqual({
      code: 0,
      stdout: lines('Checked 3 image(s) in N s: 3 intact.', 'The store is healthy.'),
      stderr: 'checked 3/3 image(s)\n',
    })

    // A folder where the first image's file should be: opening it works, reading it fails.
    const blocked = encryptedFileOf(root, images[0].id)
    fs.rmSync(blocked)
    fs.mkdirSync(blocked)
    const reason = `Could not read the encrypted file ${blocked}: Is a directory (os error 21)`
    initPixstoreBackend(config)
    expect(await verifyStore()).toEqual({
      ...healthy,
      healthy: false,
      intact: 2,
      damaged: [{ id: images[0].id, reason }],
    })
    expectSameBytes(await readImage(images[1].id), images[1].bytes)
    await closePixstoreBackend()
    expect(await cliVerify(config)).toEqual({
      code: 1,
      stdout: lines(
        'Checked 3 image(s) in N s: 2 intact.',
        `  damaged       ${images[0].id}  ${reason}`,
        'The store has problems (listed above).',
      ),
      stderr: 'checked 3/3 image(s)\n',
    })

    const none = { ...config, databasePath: path.join(path.dirname(root), 'none.sqlite') }
    const cannotRun = await cliVerify(none)
    expect([cannotRun.code, cannotRun.stdout]).toEqual([2, ''])
    expect(cannotRun.stderr).toBe(
      `pixstore: no database at "${none.databasePath}": pass the databasePath your app uses ` +
        'with --database (and its imageRootDir with --images)\n',
    )
    expect(fs.existsSync(none.databasePath)).toBe(false)
  })
})

describe('records damaged in the database', () => {
  /** Saves one asset in a child that then dies, so its writer is registered and dead. */
  async function saveAndDie(config, name) {
    const { steps, signal } = await runChild(config, [
      { op: 'init' },
      { op: 'save', asset: name },
      { op: 'kill' },
    ])
    expect([signal, steps.map(({ op, ok }) => [op, ok])]).toEqual([
      'SIGKILL',
      [
        ['init', true],
        ['save', true],
      ],
    ])
    return { id: steps[1].value, bytes: asset(name) }
  }

  test('an unreadable file version or token: listed as damaged, the file kept by the sweep and --repair, deletable beside other deletes', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const [b, c, d] = await seed(config, [
      ['1-pixel.png', undefined],
      ['thumb-64.jpg', undefined],
      ['vilnius-800.webp', undefined],
    ])
    // `a` was written by a writer that died: the start-up sweep removes what it left unnamed.
    const a = await saveAndDie(config, 'vilnius.jpg')
    const aFile = encryptedFileOf(root, a.id)
    sqlite(
      config.databasePath,
      `UPDATE image_records SET file_version = file_version || 'Z' WHERE id = '${a.id}'`,
    )
    sqlite(config.databasePath, `UPDATE image_records SET token = 'abc' WHERE id = '${b.id}'`)
    const before = snapshot(root)

    const versionReason = `The record of image ${a.id} names a file version this store did not write`
    const tokenReason = `The record of image ${b.id} has a damaged token column: a Text value, not an integer`
    initPixstoreBackend(config)
    expect(await verifyStore({ repair: true })).toEqual({
      healthy: false,
      records: 4,
      intact: 2,
      missing: [],
      damaged: [
        { id: a.id, reason: versionReason },
        { id: b.id, reason: tokenReason },
      ],
      orphans: [],
      removed: 0,
      notRemoved: [],
      databaseProblems: [],
    })
    expect(snapshot(root)).toEqual(before)
    expect([
      thrown(() => getImageRecord(a.id)).code,
      (await rejection(readImage(b.id))).code,
    ]).toEqual(['INTEGRITY_ERROR', 'INTEGRITY_ERROR'])

    // Deleted together, so that a commit may hold all three: the damaged records fail neither
    // the healthy delete nor their own.
    expect(await Promise.all([deleteImage(a.id), deleteImage(b.id), deleteImage(c.id)])).toEqual([
      true,
      true,
      true,
    ])
    expect(recordIds(config.databasePath)).toEqual([d.id])
    expectSameBytes(await readImage(d.id), d.bytes)
    // The file of `a`, which no column named any more, is an orphan now, and --repair takes it.
    expect(await verifyStore({ repair: true })).toMatchObject({
      healthy: true,
      records: 1,
      intact: 1,
      orphans: [aFile],
      removed: 1,
    })
    await closePixstoreBackend()
    expect(Object.keys(snapshot(root))).toEqual([path.relative(root, encryptedFileOf(root, d.id))])
  })

  test('a 3.x name beside a recorded image (a downgrade under way) is no orphan', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const [a] = await seed(config, [['thumb-64.jpg', 'keep']])
    const versioned = encryptedFileOf(root, a.id)
    const legacy = path.join(root, 'keep', `${keyOf(a.id)}.pixstore-image`)
    fs.linkSync(versioned, legacy)

    initPixstoreBackend(config)
    expect(await verifyStore({ repair: true })).toMatchObject({ healthy: true, orphans: [] })
    await closePixstoreBackend()
    expect([fs.existsSync(versioned), fs.existsSync(legacy)]).toEqual([true, true])
  })

  test('a check right after a crash waits for the start-up sweep: no orphan of the dead writer is listed', async () => {
    const { config } = newStore()
    const root = config.imageRootDir
    const a = await saveAndDie(config, 'vilnius.jpg')
    // A second file of the dead writer that no record names, as an update cut short leaves.
    const aFile = encryptedFileOf(root, a.id)
    const left = aFile.replace(/-([0-9a-f]+)\.pixstore-image$/, '-ffff.pixstore-image')
    fs.copyFileSync(aFile, left)

    initPixstoreBackend(config)
    expect(await verifyStore()).toMatchObject({ healthy: true, records: 1, intact: 1, orphans: [] })
    expectSameBytes(await readImage(a.id), a.bytes)
    await closePixstoreBackend()
    expect([fs.existsSync(aFile), fs.existsSync(left)]).toEqual([true, false])
  })
})
