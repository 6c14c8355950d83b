// Packs the npm tarballs into pack/: the main package, with one optional dependency per platform
// package under npm/, and each platform package whose binary is built. Prints their sizes.
//
//   node scripts/pack.mjs [--binary <path to a built .node>]
//
// The binary defaults to the one `npm run build` leaves in the repository root. This is the
// local half of the release flow; on the public host, CI builds every platform and
// `napi pre-publish` does the same before publishing.

import { execFileSync } from 'node:child_process'
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
} from 'node:fs'
import { writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const root = fileURLToPath(new URL('..', import.meta.url))
const out = join(root, 'pack')
const { values: options } = parseArgs({ options: { binary: { type: 'string' } } })

const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const { binaryName } = manifest.napi
const platforms = readdirSync(join(root, 'npm'))

rmSync(out, { recursive: true, force: true })
mkdirSync(out)

/** Runs `npm pack` in `dir` and returns what npm reports of the tarball. */
function pack(dir) {
  const json = execFileSync('npm', ['pack', '--json', '--pack-destination', out], {
    cwd: dir,
    encoding: 'utf8',
    env: { ...process.env, npm_config_ignore_scripts: 'true' },
  })
  const [report] = JSON.parse(json)
  return { file: join(out, report.filename), size: report.size, unpacked: report.unpackedSize }
}

const packed = []
for (const platform of platforms) {
  const name = `${binaryName}.${platform}.node`
  const built = platform === 'linux-x64-gnu' && options.binary ? options.binary : join(root, name)
  if (!existsSync(built)) continue
  const staging = mkdtempSync(join(tmpdir(), `pixstore-pack-${platform}-`))
  cpSync(join(root, 'npm', platform), staging, { recursive: true })
  cpSync(built, join(staging, name))
  packed.push({ name: `${binaryName}-${platform}`, ...pack(staging) })
  rmSync(staging, { recursive: true, force: true })
}
if (packed.length === 0) {
  throw new Error('No built binary to pack: run `npm run build` first, or pass --binary <path>')
}

const staging = mkdtempSync(join(tmpdir(), 'pixstore-pack-main-'))
for (const entry of [...manifest.files, 'README.md', 'LICENSE']) {
  cpSync(join(root, entry), join(staging, entry), { recursive: true })
}
const published = { ...manifest }
delete published.devDependencies
delete published.scripts
delete published.jest
published.optionalDependencies = Object.fromEntries(
  platforms.map((platform) => [`${binaryName}-${platform}`, manifest.version]),
)
writeFileSync(join(staging, 'package.json'), `${JSON.stringify(published, null, 2)}\n`)
packed.unshift({ name: manifest.name, ...pack(staging) })
rmSync(staging, { recursive: true, force: true })

const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KB`
for (const { name, file, size, unpacked } of packed) {
  console.log(
    `${name.padEnd(24)} ${kb(size).padStart(10)} packed ${kb(unpacked).padStart(10)} unpacked  ${file}`,
  )
}
