'use strict'

// Master keys: image keys wrapped before they reach SQLite, the wrong key refused at init,
// rotation while serving, across processes, and after a crash midway.

const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const { spawn, spawnSync } = require('node:child_process')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  saveImage,
  updateImage,
  deleteImage,
  readImage,
  getImageRecord,
  rotateMasterKey,
  PixstoreError,
} = require('../backend')
const { asset, freshStore } = require('./helpers')

const KEY_A = crypto.randomBytes(32)
const KEY_B = crypto.randomBytes(32)
const CHILD = path.join(__dirname, 'fixtures', 'keys-child.js')
const CLI = path.join(__dirname, '..', 'bin', 'pixstore.js')

/** The fingerprint that names a master key in the database. */
function fingerprint(key) {
  return crypto
    .createHmac('sha256', key)
    .update('pixstore master key fingerprint')
    .digest('hex')
    .slice(0, 32)
}

function sql(db, query) {
  const run = spawnSync('sqlite3', [db, query], { encoding: 'utf8' })
  if (run.status !== 0) throw new Error(`sqlite3: ${run.stderr}`)
  return run.stdout.trim()
}

function metaColumns(db) {
  return sql(db, 'SELECT meta FROM image_records ORDER BY id').split('\n').filter(Boolean)
}

function initError(config) {
  try {
    initPixstoreBackend(config)
  } catch (err) {
    return err
  }
  throw new Error('init succeeded')
}

/** Every form a secret could take in a file: raw bytes, base64, base64url and hex. */
function forms(bytes) {
  return [
    bytes,
    Buffer.from(bytes.toString('base64')),
    Buffer.from(bytes.toString('base64url')),
    Buffer.from(bytes.toString('hex')),
  ]
}

function holdsAny(file, secrets) {
  const content = fs.readFileSync(file)
  return secrets.flatMap(forms).some((form) => content.includes(form))
}

afterEach(async () => {
  await closePixstoreBackend().catch(() => {})
})

test('a store opened with a master key keeps no image key in SQLite, and hands out the same records', async () => {
  const { config } = freshStore({ masterKey: KEY_A })
  initPixstoreBackend(config)
  const images = [asset('1-pixel.png'), asset('1-pixel.webp'), asset('thumb-64.jpg')]
  const saved = []
  for (const image of images) saved.push(await saveImage(image))
  const updated = await updateImage(saved[0].id, asset('antalya.jpg'))

  for (const [i, record] of saved.entries()) {
    expect(Buffer.from(record.meta.key, 'base64')).toHaveLength(32)
    const current = i === 0 ? updated : record
    expect(getImageRecord(record.id)).toMatchObject({ id: record.id, meta: current.meta })
    expect(
      Buffer.compare(await readImage(record.id), i === 0 ? asset('antalya.jpg') : images[i]),
    ).toBe(0)
  }
  await closePixstoreBackend()

  // Nothing in the database (WAL folded back by the close) holds an image key or the master key.
  const keys = [...saved, updated].map((r) => Buffer.from(r.meta.key, 'base64'))
  expect(fs.existsSync(`${config.databasePath}-wal`)).toBe(false)
  expect(holdsAny(config.databasePath, [...keys, KEY_A])).toBe(false)
  for (const meta of metaColumns(config.databasePath)) {
    const column = JSON.parse(meta)
    expect(Object.keys(column).sort()).toEqual(['iv', 'masterKey', 'tag', 'wrappedKey'])
    expect(column.masterKey).toBe(fingerprint(KEY_A))
    // 12-byte nonce, 32-byte key, 16-byte tag.
    expect(Buffer.from(column.wrappedKey, 'base64')).toHaveLength(60)
  }
  expect(
    sql(config.databasePath, "SELECT value FROM pixstore_meta WHERE name = 'master_key'"),
  ).toBe(fingerprint(KEY_A))
})

test('without the master key, or with another, init fails and changes nothing', async () => {
  const { dir, config } = freshStore({ masterKey: KEY_A })
  initPixstoreBackend(config)
  const record = await saveImage(asset('1-pixel.png'))
  await closePixstoreBackend()
  const before = fs.readFileSync(config.databasePath)

  const missing = initError({ ...config, masterKey: undefined })
  expect(missing).toBeInstanceOf(PixstoreError)
  expect(missing.code).toBe('MASTER_KEY_REQUIRED')
  expect(missing.message).toContain('PIXSTORE_MASTER_KEY')

  const wrong = initError({ ...config, masterKey: KEY_B })
  expect(wrong.code).toBe('WRONG_MASTER_KEY')
  expect(wrong.message).toContain(fingerprint(KEY_A))
  expect(wrong.message).not.toContain(KEY_B.toString('base64'))
  expect(Buffer.compare(fs.readFileSync(config.databasePath), before)).toBe(0)

  // The environment variable, and base64 text, work as well as a Buffer. (Jest gives tests a
  // copy of process.env, so the variable is tried in a child.)
  const configPath = path.join(dir, 'child-config.json')
  fs.writeFileSync(configPath, JSON.stringify({ ...config, masterKey: undefined }))
  const child = spawnSync(process.execPath, [CHILD, 'open', configPath, record.id], {
    encoding: 'utf8',
    env: { ...process.env, PIXSTORE_MASTER_KEY: KEY_A.toString('base64') },
  })
  expect(child.stderr).toBe('')
  expect(JSON.parse(child.stdout)).toEqual({ meta: record.meta })
  initPixstoreBackend({ ...config, masterKey: KEY_A.toString('base64') })
  expect(Buffer.compare(await readImage(record.id), asset('1-pixel.png'))).toBe(0)
})

test('a malformed master key is refused, naming where it came from', () => {
  const { dir, config } = freshStore()
  const short = initError({ ...config, masterKey: Buffer.alloc(31) })
  expect(short.code).toBe('INVALID_CONFIG')
  expect(short.message).toBe(
    'Invalid masterKey: expected 32 bytes (a Buffer, or a string of their base64), got 31 bytes',
  )

  const configPath = path.join(dir, 'child-config.json')
  fs.writeFileSync(configPath, JSON.stringify(config))
  const env = spawnSync(process.execPath, [CHILD, 'open', configPath], {
    encoding: 'utf8',
    env: { ...process.env, PIXSTORE_MASTER_KEY: 'not base64!' },
  })
  expect(env.status).toBe(1)
  expect(JSON.parse(env.stdout)).toEqual({
    error: 'INVALID_CONFIG',
    message:
      'Invalid PIXSTORE_MASTER_KEY: expected the base64 of 32 random bytes (make one with ' +
      '`openssl rand -base64 32`)',
  })

  const typed = initError({ ...config, masterKey: 42 })
  expect(typed).toBeInstanceOf(TypeError)
  expect(typed.message).toContain('config.masterKey must be a Buffer or Uint8Array of 32 bytes')

  // An empty string (`process.env.KEY ?? ''`) is no way to say "no key": null is.
  const empty = initError({ ...config, masterKey: '' })
  expect([empty.code, empty.message]).toEqual([
    'INVALID_CONFIG',
    'Invalid masterKey: expected 32 bytes (a Buffer, or a string of their base64), got 0 bytes',
  ])
  expect(fs.existsSync(config.databasePath)).toBe(false)
})

test("a plain store is not wrapped behind the caller's back: rotateMasterKey wraps it, null unwraps it", async () => {
  const { config } = freshStore()
  initPixstoreBackend(config)
  const records = []
  for (let i = 0; i < 5; i++) records.push(await saveImage(asset('1-pixel.webp')))
  await closePixstoreBackend()

  const refused = initError({ ...config, masterKey: KEY_A })
  expect(refused.code).toBe('WRONG_MASTER_KEY')
  expect(refused.message).toContain('the 5 image key(s) of this store are not wrapped')

  initPixstoreBackend(config)
  await expect(rotateMasterKey(KEY_A)).resolves.toEqual({ rewrapped: 5 })
  for (const meta of metaColumns(config.databasePath)) {
    expect(JSON.parse(meta).masterKey).toBe(fingerprint(KEY_A))
  }
  for (const record of records) expect(getImageRecord(record.id).meta).toEqual(record.meta)

  // 3.x cannot read wrapped keys: the downgrade refuses until they are plain again.
  await closePixstoreBackend()
  const cli = (env) =>
    spawnSync(
      process.execPath,
      [CLI, 'downgrade', '--database', config.databasePath, '--images', config.imageRootDir],
      { encoding: 'utf8', env: { ...process.env, ...env } },
    )
  const downgrade = cli({ PIXSTORE_MASTER_KEY: KEY_A.toString('base64') })
  expect(downgrade.status).toBe(1)
  expect(downgrade.stderr).toContain('INCOMPATIBLE_STORE: pixstore 3.x cannot read image keys')

  initPixstoreBackend({ ...config, masterKey: KEY_A })
  await expect(rotateMasterKey(null)).resolves.toEqual({ rewrapped: 5 })
  await closePixstoreBackend()
  for (const meta of metaColumns(config.databasePath)) {
    expect(Object.keys(JSON.parse(meta))).toEqual(['key', 'iv', 'tag'])
  }
  initPixstoreBackend(config)
  for (const record of records) expect(getImageRecord(record.id).meta).toEqual(record.meta)
})

test('rotation leaves no plain key in the database file, and a second rotation at once is refused', async () => {
  const { config } = freshStore()
  initPixstoreBackend(config)
  const records = []
  for (let i = 0; i < 50; i++) records.push(await saveImage(asset('1-pixel.png')))

  const first = rotateMasterKey(KEY_A)
  const second = await rotateMasterKey(KEY_B).catch((err) => err)
  expect(second).toBeInstanceOf(PixstoreError)
  expect([second.code, second.message]).toEqual([
    'INVALID_ARGUMENT',
    'A master key rotation is already running in this process: wait for it to finish',
  ])
  await expect(first).resolves.toEqual({ rewrapped: 50 })
  await closePixstoreBackend()

  // Freed space is zeroed (secure_delete): the plain keys the rotation replaced are gone.
  const keys = records.map((r) => Buffer.from(r.meta.key, 'base64'))
  expect(holdsAny(config.databasePath, keys)).toBe(false)

  // masterKey: null opens without a key even when the environment holds one; here that is
  // refused, since the store is now wrapped.
  const configPath = path.join(path.dirname(config.databasePath), 'child-config.json')
  fs.writeFileSync(configPath, JSON.stringify({ ...config, masterKey: null }))
  const child = spawnSync(process.execPath, [CHILD, 'open', configPath], {
    encoding: 'utf8',
    env: { ...process.env, PIXSTORE_MASTER_KEY: KEY_A.toString('base64') },
  })
  expect(JSON.parse(child.stdout).error).toBe('MASTER_KEY_REQUIRED')
})

test('a record whose key cannot be read stops a rotation, naming it; once it is gone the rotation finishes', async () => {
  const { config } = freshStore()
  initPixstoreBackend({ ...config, masterKey: KEY_A })
  const saved = []
  for (const name of ['1-pixel.png', 'thumb-64.jpg', 'vilnius-800.webp']) {
    saved.push({ record: await saveImage(asset(name)), bytes: asset(name) })
  }
  await closePixstoreBackend()
  const [damagedMeta, ...healthy] = saved
  sql(
    config.databasePath,
    `UPDATE image_records SET meta = x'00' WHERE id = '${damagedMeta.record.id}'`,
  )
  // A row no call can reach: its id is not text.
  sql(config.databasePath, "INSERT INTO image_records(id, token, meta) VALUES (x'ff', 1, '{}')")
  const blobRow = sql(
    config.databasePath,
    "SELECT rowid FROM image_records WHERE typeof(id) = 'blob'",
  )

  initPixstoreBackend({ ...config, masterKey: KEY_A })
  const stopped = await rotateMasterKey(KEY_B).catch((err) => err)
  expect([stopped.code, stopped.message]).toEqual([
    'INTEGRITY_ERROR',
    `The record of image ${damagedMeta.record.id} has an unreadable meta column: not JSON`,
  ])
  for (const { record, bytes } of healthy) {
    expect(Buffer.from(await readImage(record.id)).equals(bytes)).toBe(true)
  }
  expect(await deleteImage(damagedMeta.record.id)).toBe(true)

  const unreachable = await rotateMasterKey(KEY_B).catch((err) => err)
  expect([unreachable.code, unreachable.message]).toEqual([
    'INTEGRITY_ERROR',
    `The record in row ${blobRow} of image_records has an id this version cannot read (a Blob ` +
      'value), so no call can reach it and its key cannot be re-wrapped: delete that row ' +
      `(DELETE FROM image_records WHERE rowid = ${blobRow}) or restore it from a backup, then ` +
      'call rotateMasterKey again',
  ])
  sql(config.databasePath, `DELETE FROM image_records WHERE rowid = ${blobRow}`)

  expect(await rotateMasterKey(KEY_B)).toEqual({ rewrapped: 2 })
  await closePixstoreBackend()
  expect(initError({ ...config, masterKey: KEY_A }).code).toBe('WRONG_MASTER_KEY')
  initPixstoreBackend({ ...config, masterKey: KEY_B })
  for (const { record, bytes } of healthy) {
    expect(Buffer.from(await readImage(record.id)).equals(bytes)).toBe(true)
  }
  expect(metaColumns(config.databasePath).every((meta) => meta.includes(fingerprint(KEY_B)))).toBe(
    true,
  )
})

test('rotation re-wraps every key while reads and writes go on, and the old key stops opening the store', async () => {
  const { config } = freshStore({ masterKey: KEY_A })
  initPixstoreBackend(config)
  const image = asset('1-pixel.png')
  const records = await Promise.all(Array.from({ length: 600 }, () => saveImage(image)))

  let busy = true
  const traffic = (async () => {
    let calls = 0
    for (let i = 0; busy; i++) {
      const record = records[i % records.length]
      expect(Buffer.compare(await readImage(record.id), image)).toBe(0)
      if (i % 10 === 0) await updateImage(records[(i * 7) % records.length].id, image)
      if (i % 25 === 0) records.push(await saveImage(image))
      calls++
    }
    return calls
  })()
  const { rewrapped } = await rotateMasterKey(KEY_B)
  busy = false
  const calls = await traffic

  expect(rewrapped).toBeGreaterThanOrEqual(1)
  expect(calls).toBeGreaterThan(0)
  for (const meta of metaColumns(config.databasePath)) {
    expect(JSON.parse(meta).masterKey).toBe(fingerprint(KEY_B))
  }
  const metas = records.map((r) => getImageRecord(r.id).meta)
  await closePixstoreBackend()

  expect(initError(config).code).toBe('WRONG_MASTER_KEY')
  initPixstoreBackend({ ...config, masterKey: KEY_B })
  expect(records.map((r) => getImageRecord(r.id).meta)).toEqual(metas)
  for (const record of records.slice(0, 50)) {
    expect(Buffer.compare(await readImage(record.id), image)).toBe(0)
  }
})

test('another process writing with the old key follows a rotation it did not start', async () => {
  const { dir, config } = freshStore({ masterKey: KEY_A })
  initPixstoreBackend(config)
  const first = await saveImage(asset('1-pixel.png'))

  const configPath = path.join(dir, 'child-config.json')
  fs.writeFileSync(configPath, JSON.stringify({ ...config, masterKey: KEY_A.toString('base64') }))
  const child = spawn(process.execPath, [CHILD, 'save', configPath], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const lines = []
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (text) => lines.push(...text.split('\n').filter(Boolean).map(JSON.parse)))
  const until = async (done) => {
    while (!done()) await new Promise((resolve) => setTimeout(resolve, 10))
  }

  await until(() => lines.length >= 20)
  await expect(rotateMasterKey(KEY_B)).resolves.toMatchObject({ rewrapped: expect.any(Number) })
  const rotatedAt = lines.length
  await until(() => lines.length >= rotatedAt + 20)
  child.stdin.end()
  const code = await new Promise((resolve) => child.on('exit', resolve))
  expect(code).toBe(0)
  expect(lines.filter((line) => line.error)).toEqual([])

  // Every record, the child's after the rotation included, is wrapped under the new key.
  const targets = metaColumns(config.databasePath).map((meta) => JSON.parse(meta).masterKey)
  expect(targets).toHaveLength(lines.length + 1)
  expect(new Set(targets)).toEqual(new Set([fingerprint(KEY_B)]))
  await closePixstoreBackend()
  initPixstoreBackend({ ...config, masterKey: KEY_B })
  for (const { id } of [first, ...lines.slice(-5)]) {
    expect(Buffer.compare(await readImage(id), asset('1-pixel.png'))).toBe(0)
  }
})

test('a rotation killed midway leaves every key readable with either key, and resumes with the new one', async () => {
  const { dir, config } = freshStore()
  const rows = 30000
  initPixstoreBackend(config)
  const original = await saveImage(asset('1-pixel.png'))
  await closePixstoreBackend()
  // Many records sharing one plain key, so the rotation takes long enough to be cut.
  sql(
    config.databasePath,
    `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${rows})
     INSERT INTO image_records(id, token, meta, file_version)
     SELECT 'copy' || i, token, meta, file_version FROM image_records, n WHERE id = '${original.id}'`,
  )
  initPixstoreBackend(config)
  await expect(rotateMasterKey(KEY_A)).resolves.toEqual({ rewrapped: rows + 1 })
  await closePixstoreBackend()

  const configPath = path.join(dir, 'child-config.json')
  fs.writeFileSync(configPath, JSON.stringify({ ...config, masterKey: KEY_A.toString('base64') }))
  const child = spawn(process.execPath, [CHILD, 'rotate', configPath, KEY_B.toString('base64')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  const underB = () =>
    Number(
      sql(
        config.databasePath,
        `SELECT count(*) FROM image_records WHERE instr(meta, '${fingerprint(KEY_B)}') > 0`,
      ),
    )
  let seen = 0
  while (seen === 0) seen = underB()
  child.kill('SIGKILL')
  await new Promise((resolve) => child.on('exit', resolve))

  const cut = underB()
  expect(cut).toBeGreaterThanOrEqual(seen)
  expect(cut).toBeLessThan(rows + 1)
  expect(
    sql(config.databasePath, "SELECT count(*) FROM pixstore_meta WHERE name = 'rotation_target'"),
  ).toBe('1')

  // Every record's key, read through the master key the store was opened with.
  const unreadable = () => {
    const wrong = []
    for (let i = 1; i <= rows; i += 1) {
      if (getImageRecord(`copy${i}`).meta.key !== original.meta.key) wrong.push(`copy${i}`)
    }
    return wrong
  }

  // The old key opens the store and reads every key, whichever master key wraps it.
  initPixstoreBackend({ ...config, masterKey: KEY_A })
  expect(getImageRecord(original.id).meta).toEqual(original.meta)
  expect(unreadable()).toEqual([])
  expect(Buffer.compare(await readImage(original.id), asset('1-pixel.png'))).toBe(0)
  await closePixstoreBackend()
  expect(underB()).toBe(cut)

  // The new key opens it too, reads every key while the rotation resumes in the background,
  // and finishes it.
  initPixstoreBackend({ ...config, masterKey: KEY_B })
  expect(unreadable()).toEqual([])
  const deadline = Date.now() + 30000
  while (
    sql(
      config.databasePath,
      "SELECT count(*) FROM pixstore_meta WHERE name = 'rotation_target'",
    ) !== '0'
  ) {
    if (Date.now() > deadline) throw new Error('the rotation did not resume')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  expect(underB()).toBe(rows + 1)
  await closePixstoreBackend()
  expect(initError({ ...config, masterKey: KEY_A }).code).toBe('WRONG_MASTER_KEY')
  initPixstoreBackend({ ...config, masterKey: KEY_B })
  expect(unreadable()).toEqual([])
  expect(Buffer.compare(await readImage(original.id), asset('1-pixel.png'))).toBe(0)
}, 60000)
