// Stores real photos, updates one, reads every one back and checks it byte for byte, then
// deletes them. Prints what it did and how long each step took; never prints key material.

import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'

import {
  closePixstoreBackend,
  deleteImage,
  imageExists,
  initPixstoreBackend,
  readImage,
  saveImageFromFile,
  updateImage,
} from 'pixstore/backend'

const assets = fileURLToPath(new URL('../assets/', import.meta.url))
const photos = ['antalya.jpg', 'vilnius.jpg', 'vilnius-800.png', 'vilnius-800.webp', 'thumb-64.jpg']
const store = mkdtempSync(join(tmpdir(), 'pixstore-demo-'))

const kb = (bytes) => `${(bytes / 1024).toFixed(1).padStart(7)} KB`
const sha = (bytes) => createHash('sha256').update(bytes).digest('hex').slice(0, 12)

async function timed(label, work) {
  const start = performance.now()
  const result = await work()
  console.log(`${label.padEnd(58)} ${(performance.now() - start).toFixed(1).padStart(7)} ms`)
  return result
}

let failures = 0
function check(ok, what) {
  if (!ok) {
    failures += 1
    console.log(`  MISMATCH: ${what}`)
  }
}

initPixstoreBackend({
  imageRootDir: join(store, 'images'),
  databasePath: join(store, 'pixstore.sqlite'),
  defaultEndpointEnabled: false,
  errorHandlingMode: 'throw',
})
console.log(`Store opened in ${store}\n`)

const expected = new Map()
for (const name of photos) {
  const file = join(assets, name)
  const record = await timed(`save   ${name.padEnd(18)} ${kb(statSync(file).size)}`, () =>
    saveImageFromFile(file, 'demo'),
  )
  expected.set(record.id, readFileSync(file))
  console.log(`       -> id ${record.id}, token ${record.token}`)
}

const [firstId] = expected.keys()
const replacement = readFileSync(join(assets, 'vilnius-800.webp'))
const updated = await timed(`update ${firstId} with vilnius-800.webp`, () =>
  updateImage(firstId, replacement),
)
expected.set(firstId, replacement)
console.log(`       -> token ${updated.token}`)

console.log()
for (const [id, original] of expected) {
  const bytes = await timed(`read   ${id}`, () => readImage(id))
  const same = Buffer.compare(bytes, original) === 0
  check(same, `${id} read back differs from what was stored`)
  console.log(`       -> ${kb(bytes.length)}, sha256 ${sha(bytes)}…, identical: ${same}`)
}

const files = readdirSync(join(store, 'images', 'demo'))
console.log(`\n${files.length} encrypted files on disk for ${expected.size} images`)
check(files.length === expected.size, 'one encrypted file per image')

console.log()
for (const id of expected.keys()) {
  const deleted = await timed(`delete ${id}`, () => deleteImage(id))
  check(deleted === true && !(await imageExists(id)), `${id} was not deleted`)
}
check(readdirSync(join(store, 'images', 'demo')).length === 0, 'no file left after deleting')

await closePixstoreBackend()
rmSync(store, { recursive: true, force: true })

if (failures > 0) {
  console.log(`\n${failures} check(s) failed`)
  process.exit(1)
}
console.log(`\nAll ${expected.size} images round-tripped byte for byte; the store was removed.`)
