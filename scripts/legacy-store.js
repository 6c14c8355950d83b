'use strict'

// Makes large pixstore 3.x stores for tests and benchmarks: a copy of the committed fixture
// (written by the real pixstore 3.2.1), grown by giving its encrypted files more names with
// rows to match. A 3.x file is bound to its key and IV, not to its name, so every copy
// decrypts like the original. Needs the sqlite3 shell.

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const FIXTURE = path.join(__dirname, '..', '__test__', 'fixtures', 'store-3x')

function readManifest() {
  return JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8'))
}

/**
 * Copies the fixture into `dir` and adds `extra` images `bulk<N>:copy<i>` spread over folders
 * of 1,000, each a copy of one of the fixture's images in turn.
 *
 * @returns {{ config: object, images: { id: string, asset: string }[] }}
 */
function writeLegacyStore(dir, extra = 0) {
  fs.cpSync(FIXTURE, dir, { recursive: true })
  const root = path.join(dir, 'images')
  const databasePath = path.join(dir, 'pixstore.sqlite')
  const { images: originals } = readManifest()

  const images = originals.map(({ id, asset }) => ({ id, asset }))
  const rows = []
  for (let i = 0; i < extra; i++) {
    const source = originals[i % originals.length]
    const folder = `bulk${Math.floor(i / 1000)}`
    const key = `copy${i}`
    if (i % 1000 === 0) fs.mkdirSync(path.join(root, folder), { recursive: true })
    fs.linkSync(legacyFile(root, source.id), path.join(root, folder, `${key}.pixstore-image`))
    rows.push(`('${folder}:${key}', '${source.id}')`)
    images.push({ id: `${folder}:${key}`, asset: source.asset })
  }
  if (rows.length > 0) {
    // Through standard input: one argument of this size is more than exec allows.
    execFileSync('sqlite3', [databasePath], {
      input: `BEGIN;
        CREATE TEMP TABLE copies(id TEXT, source TEXT);
        INSERT INTO copies VALUES ${rows.join(',')};
        INSERT INTO image_records(id, token, meta)
          SELECT copies.id, token, meta FROM copies JOIN image_records ON image_records.id = source;
        COMMIT;`,
    })
  }
  return { config: { imageRootDir: root, databasePath }, images }
}

/** Where 3.x keeps the file of `id` under `root`. */
function legacyFile(root, id) {
  const parts = id.split(':')
  return path.join(root, ...parts.slice(0, -1), `${parts.at(-1)}.pixstore-image`)
}

module.exports = { FIXTURE, readManifest, writeLegacyStore, legacyFile }
