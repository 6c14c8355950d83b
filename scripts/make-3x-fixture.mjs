// Writes the pixstore 3.x store that the upgrade tests open: real photos saved by the real
// pixstore 3.2.1 in several folders and formats, one of them updated and one deleted, and a
// manifest of what each id must read back as. The output is committed, so CI needs no 3.x.
//
//   npm ci --prefix __test__/peer --ignore-scripts
//   npm rebuild better-sqlite3 --prefix __test__/peer --ignore-scripts=false
//   node scripts/make-3x-fixture.mjs

import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const out = join(root, '__test__', 'fixtures', 'store-3x')
const peer = join(root, '__test__', 'peer', 'node_modules', 'pixstore3')
const asset = (name) => readFileSync(join(root, 'assets', name))
const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')

rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })

const v3 = await import(pathToFileURL(join(peer, 'backend', 'index.js')).href)
v3.initPixstoreBackend({
  imageRootDir: join(out, 'images'),
  databasePath: join(out, 'pixstore.sqlite'),
  defaultEndpointEnabled: false,
  errorHandlingMode: 'throw',
  statelessKeyWindowLength: 20000,
})

const images = []
async function save(name, dir) {
  const record = await v3.saveImage(asset(name), dir)
  images.push({ id: record.id, asset: name, token: record.token })
  return record
}

await save('1-pixel.png')
await save('vilnius-800.webp', 'trips')
await save('thumb-64.jpg', 'avatars')
await save('1-pixel.webp', 'avatars')
const replaced = await save('1-pixel.png', 'trips')
const gone = await save('thumb-64.jpg', 'trash')

const updated = await v3.updateImage(replaced.id, asset('thumb-64.jpg'))
Object.assign(
  images.find((image) => image.id === replaced.id),
  {
    asset: 'thumb-64.jpg',
    token: updated.token,
  },
)
await v3.deleteImage(gone.id)
images.splice(
  images.findIndex((image) => image.id === gone.id),
  1,
)

const manifest = {
  writtenBy: 'pixstore@3.2.1',
  images: images.map((image) => ({ ...image, sha256: sha256(asset(image.asset)) })),
  deleted: [gone.id],
}
writeFileSync(join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`)
console.log(`Wrote ${images.length} images (and one deleted) to ${out}`)
process.exit(0)
