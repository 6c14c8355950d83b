'use strict'

// The stress test, with Node's cluster module: four worker processes open one store at once and
// for PIXSTORE_STRESS_SECONDS (default 30) save, update, read, look up, check and delete real
// images under a master key, eight calls in flight each, on ids of their own and on shared ids they race on
// (fixtures/stress-primary.js and stress-worker.js). No error may reach a caller (no
// SQLITE_BUSY, DATABASE_ERROR or STORAGE_ERROR, nothing) but NOT_FOUND from an update of a
// shared id that some worker deleted, and every outcome must be the one expected. Afterwards,
// with every worker closed, every record must decrypt to the last image written to it, no
// deleted id may be found, and the image root must hold one file per record and nothing else.

const { spawn, execFileSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

const {
  initPixstoreBackend,
  closePixstoreBackend,
  getImageRecord,
  imageExists,
  readImage,
} = require('pixstore/backend')
const { asset, freshStore, encryptedFiles, JsonLines } = require('./helpers.js')

const PRIMARY = path.join(__dirname, 'fixtures', 'stress-primary.js')
const SECONDS = Number(process.env.PIXSTORE_STRESS_SECONDS || 30)
const WORKERS = 4
const LANES = 8
/** Calls a second each worker must make at least. Seen on a 2-core machine: 250 (busy) to 450. */
const MIN_CALLS_PER_SECOND = 50
/** What the workers call, on their own ids and on shared ones. */
const OPERATIONS = [
  'saveImage',
  'updateImage',
  'readImage',
  'getImageRecord',
  'imageExists',
  'deleteImage',
]

let store
let stderr = ''
let reports // index -> the worker's report (see stress-worker.js)
const failed = []
let exits

const sum = (values) => values.reduce((total, n) => total + n, 0)
const number = (n) => Math.round(n).toLocaleString('en-US')

/** Rows of `sql` in the store's database, read with the sqlite3 shell, as arrays of fields. */
function databaseRows(sql) {
  const out = execFileSync('sqlite3', ['-readonly', store.config.databasePath, sql], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  return out
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split('|'))
}

/** Where the file of a record lives, relative to the image root. */
function fileOf(id, version) {
  const [dir, key] = id.includes(':') ? id.split(':') : [null, id]
  const name = `${key}.${version}.pixstore-image`
  return dir === null ? name : path.join(dir, name)
}

/** Outcomes of every worker, added up: `${operation} ${target}` -> { [code]: calls }. */
function allOutcomes() {
  const total = {}
  for (const report of reports.values()) {
    for (const [key, codes] of Object.entries(report.outcomes)) {
      total[key] ??= {}
      for (const [code, n] of Object.entries(codes)) total[key][code] = (total[key][code] ?? 0) + n
    }
  }
  return total
}

/** What every worker did to the shared ids, put together. */
function sharedIds() {
  const writes = new Map() // id -> [{ token, image, index }]
  const deletedBy = new Map() // id -> indexes of the workers whose delete resolved true
  const foundGone = new Set() // ids an update, read, lookup, check or delete found gone
  for (const [index, report] of reports) {
    for (const [id, list] of Object.entries(report.sharedWrites)) {
      if (!writes.has(id)) writes.set(id, [])
      for (const [token, image] of list) writes.get(id).push({ token, image, index })
    }
    for (const id of report.sharedDeleted) deletedBy.set(id, [...(deletedBy.get(id) ?? []), index])
    for (const id of [...report.sharedNotFound, ...report.sharedAbsent]) foundGone.add(id)
  }
  return { writes, deletedBy, foundGone }
}

/** The ids that must be alive at the end: id -> { token, image } of the write that must hold. */
function expectedRecords() {
  const expected = new Map()
  for (const report of reports.values()) {
    for (const [id, [token, image]] of Object.entries(report.own))
      expected.set(id, { token, image })
  }
  const { writes, deletedBy } = sharedIds()
  for (const [id, list] of writes) {
    if (deletedBy.has(id)) continue
    // The last write to commit wins, and it has the largest token.
    const last = list.reduce((a, b) => (b.token > a.token ? b : a))
    expected.set(id, { token: last.token, image: last.image })
  }
  return expected
}

function deletedIds() {
  const deleted = [...sharedIds().deletedBy.keys()]
  for (const report of reports.values()) deleted.push(...report.ownDeleted)
  return deleted
}

function summary() {
  const outcomes = allOutcomes()
  const byCode = {}
  const byOperation = {}
  for (const [key, codes] of Object.entries(outcomes)) {
    const operation = key.split(' ')[0]
    byOperation[operation] ??= {}
    for (const [code, n] of Object.entries(codes)) {
      byCode[code] = (byCode[code] ?? 0) + n
      byOperation[operation][code] = (byOperation[operation][code] ?? 0) + n
    }
  }
  const calls = sum(Object.values(byCode))
  const ms = Math.max(...[...reports.values()].map((report) => report.ms))
  const slowest = {}
  for (const report of reports.values()) {
    for (const [operation, t] of Object.entries(report.slowest)) {
      slowest[operation] = Math.max(slowest[operation] ?? 0, t)
    }
  }
  const { writes, deletedBy, foundGone } = sharedIds()
  const raced = [...writes.values()].filter((list) => new Set(list.map((w) => w.index)).size > 1)
  const codes = (counts) =>
    Object.entries(counts)
      .map(([code, n]) => `${code} ${number(n)}`)
      .join(', ')
  return [
    `stress: ${reports.size} workers x ${LANES} calls in flight for ${(ms / 1000).toFixed(1)} s: ` +
      `${number(calls)} calls, ${number(calls / (ms / 1000))} calls/s`,
    `  by code: ${codes(byCode)}`,
    ...OPERATIONS.map(
      (operation) =>
        `  ${operation}: ${number(sum(Object.values(byOperation[operation] ?? {})))} ` +
        `(${codes(byOperation[operation] ?? {})}), slowest ${number(slowest[operation] ?? 0)} ms`,
    ),
    ...[...reports]
      .sort(([a], [b]) => a - b)
      .map(
        ([index, report]) =>
          `  worker ${index}: ${number(sum(Object.values(report.outcomes).flatMap(Object.values)))} ` +
          `calls, ${report.unexpectedCount} unexpected`,
      ),
    `  shared ids: ${writes.size} saved, ${raced.length} written by more than one worker, ` +
      `${deletedBy.size} deleted, ${foundGone.size} found gone by a worker in a race`,
  ].join('\n')
}

beforeAll(async () => {
  await closePixstoreBackend()
  // Under a master key, so that the wrapping runs under the same load (given as base64: the
  // workers read their configuration as JSON).
  store = freshStore({ masterKey: crypto.randomBytes(32).toString('base64') })
})

afterAll(async () => {
  await closePixstoreBackend()
  fs.rmSync(store.dir, { recursive: true, force: true })
})

test(
  `${WORKERS} cluster workers run on one store for ${SECONDS} s and end cleanly`,
  async () => {
    const settings = { config: store.config, seconds: SECONDS, workers: WORKERS, lanes: LANES }
    const primary = spawn(process.execPath, [PRIMARY, JSON.stringify(settings)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    primary.stderr.setEncoding('utf8')
    primary.stderr.on('data', (chunk) => {
      stderr += chunk
    })
    const ended = new Promise((resolve) => primary.on('close', (code) => resolve(code)))
    const lines = new JsonLines(primary.stdout)
    reports = new Map()
    lines.onMessage = (message) => {
      if (message.type === 'report') reports.set(message.index, message)
      if (message.type === 'failed') failed.push(message)
    }

    try {
      ;({ exits } = await lines.next('done', SECONDS * 1000 + 60_000))
    } catch (err) {
      primary.kill('SIGKILL')
      throw new Error(`${err.message}; stderr: ${stderr}`)
    }
    expect(await ended).toBe(0)

    if (reports.size > 0) console.log(summary())
    expect(failed).toEqual([])
    expect(exits).toEqual(
      Array.from({ length: WORKERS }, (_, n) => ({ index: n + 1, code: 0, signal: null })),
    )
    expect(reports.size).toBe(WORKERS)
    expect(stderr).toBe('')
  },
  SECONDS * 1000 + 90_000,
)

test('no call failed, but updates of shared ids that some worker had deleted', () => {
  const unexpected = [...reports].flatMap(([index, report]) =>
    report.unexpected.map((what) => ({ index, ...what })),
  )
  expect(unexpected).toEqual([])
  expect(sum([...reports.values()].map((report) => report.unexpectedCount))).toBe(0)

  // Said once more, plainly: the only error code any call met was that NOT_FOUND.
  const errors = {}
  for (const [key, codes] of Object.entries(allOutcomes())) {
    for (const [code, n] of Object.entries(codes)) if (code !== 'OK') errors[`${key} ${code}`] = n
  }
  expect(Object.keys(errors).filter((key) => key !== 'updateImage shared NOT_FOUND')).toEqual([])
})

test(`each worker made at least ${MIN_CALLS_PER_SECOND} calls a second, of every kind, several at once`, () => {
  for (const [index, report] of reports) {
    const calls = sum(Object.values(report.outcomes).flatMap(Object.values))
    const made = new Set(Object.keys(report.outcomes))
    const missing = OPERATIONS.flatMap((operation) =>
      ['own', 'shared'].map((target) => `${operation} ${target}`),
    ).filter((key) => !made.has(key))
    expect({ index, missing, enough: calls >= MIN_CALLS_PER_SECOND * SECONDS }).toEqual({
      index,
      missing: [],
      enough: true,
    })
    expect(report.peakInFlight).toBe(LANES)
  }
})

test('the workers raced on shared ids, and agree on what happened to them', () => {
  const { writes, deletedBy, foundGone } = sharedIds()

  // Workers wrote to ids that others saved, and a delete reports true once only.
  const raced = [...writes.values()].filter((list) => new Set(list.map((w) => w.index)).size > 1)
  expect(raced.length).toBeGreaterThan(0)
  expect([...deletedBy].filter(([, by]) => by.length > 1)).toEqual([])

  // A worker found a shared id gone only if some worker's delete of it resolved true.
  expect([...foundGone].filter((id) => !deletedBy.has(id))).toEqual([])

  // Tokens never repeat for an id, across processes too.
  const repeated = [...writes].filter(
    ([, list]) => new Set(list.map((w) => w.token)).size !== list.length,
  )
  expect(repeated.map(([id]) => id)).toEqual([])
})

test('with every worker closed, the image root holds one file per record and nothing else', () => {
  const rows = databaseRows('SELECT id, file_version FROM image_records ORDER BY id')
  const expected = rows.map(([id, version]) => fileOf(id, version)).sort()
  expect(encryptedFiles(store.config.imageRootDir)).toEqual(expected)
  expect(rows.map(([id]) => id).sort()).toEqual([...expectedRecords().keys()].sort())
  // Every key was wrapped before it reached SQLite.
  expect(
    databaseRows(`SELECT count(*) FROM image_records WHERE meta NOT LIKE '%"wrappedKey"%'`),
  ).toEqual([['0']])
})

test('every record decrypts to the last image written to it, and no deleted id is found', async () => {
  initPixstoreBackend(store.config)
  const images = new Map() // asset name -> bytes
  const problems = []

  for (const [id, { token, image }] of expectedRecords()) {
    if (!images.has(image)) images.set(image, asset(image))
    const record = getImageRecord(id)
    if (record?.token !== token) {
      problems.push(`${id}: token ${record?.token}, expected ${token} (last write: ${image})`)
    }
    const bytes = await readImage(id)
    if (!bytes?.equals(images.get(image))) {
      problems.push(`${id}: reads ${bytes?.length} bytes, expected ${image}`)
    }
  }

  const deleted = deletedIds()
  for (let i = 0; i < deleted.length; i += 64) {
    await Promise.all(
      deleted.slice(i, i + 64).map(async (id) => {
        const [record, exists, bytes] = [
          getImageRecord(id),
          await imageExists(id),
          await readImage(id),
        ]
        if (record !== null || exists !== false || bytes !== null) {
          problems.push(
            `${id}: deleted, yet getImageRecord ${record === null ? 'null' : 'found a record'}, ` +
              `imageExists ${exists}, readImage ${bytes === null ? 'null' : `${bytes.length} bytes`}`,
          )
        }
      }),
    )
  }
  expect(deleted.length).toBeGreaterThan(0)
  expect(problems).toEqual([])

  // Closing waits for the start-up sweep, which must have found nothing to remove.
  await closePixstoreBackend()
  const rows = databaseRows('SELECT id, file_version FROM image_records ORDER BY id')
  const files = rows.map(([id, version]) => fileOf(id, version)).sort()
  expect(encryptedFiles(store.config.imageRootDir)).toEqual(files)
  expect(databaseRows('SELECT count(*) FROM pixstore_trash')).toEqual([['0']])
  expect(databaseRows('SELECT count(*) FROM pixstore_writers')).toEqual([['0']])
  const writers = path.join(store.config.imageRootDir, '.pixstore', 'writers')
  expect(fs.readdirSync(writers)).toEqual([])
}, 60_000)
