'use strict'

// Secrets stay secret: every file the store creates is owner-only (0600, folders 0700) whatever
// the umask, and no log line, error message or thrown value holds key material or proofs. The
// work runs in fixtures/secrets-child.js, so that its real stdout and stderr can be read; the
// scan looks for every secret of the session in every form text could carry it in.

const crypto = require('node:crypto')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { spawn, execFileSync } = require('node:child_process')

const { ERROR_CODES } = require('pixstore/shared')

const CHILD = path.join(__dirname, 'fixtures', 'secrets-child.js')

const folders = []

afterAll(() => {
  for (const folder of folders) {
    // The child leaves a file of mode 0000 and, if it failed midway, folders of 0500.
    execFileSync('chmod', ['-R', 'u+rwx', folder])
    fs.rmSync(folder, { recursive: true, force: true })
  }
})

/**
 * Runs the child with `command` in a new folder, behind `wrapper` (a command and its arguments).
 * Resolves its exit, stdout and stderr as bytes, and what it wrote to fd 3.
 */
function runChild(command, wrapper = []) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-secrets-'))
  folders.push(dir)
  return new Promise((resolve, reject) => {
    const argv = [...wrapper, process.execPath, CHILD, command, dir]
    const child = spawn(argv[0], argv.slice(1), {
      cwd: path.join(__dirname, '..'),
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    })
    const streams = [1, 2, 3].map((fd) => {
      const chunks = []
      child.stdio[fd].on('data', (chunk) => chunks.push(chunk))
      return chunks
    })
    child.on('error', reject)
    child.on('close', (code, signal) => {
      const [stdout, stderr, report] = streams.map((chunks) => Buffer.concat(chunks))
      resolve({ dir, code, signal, stdout, stderr, report })
    })
  })
}

describe('files and folders the store creates', () => {
  test('are 0600 and 0700 under umask 0o000: database, -wal, -shm, images, locks, every folder', async () => {
    const run = await runChild('layout')
    expect([run.code, run.signal, run.stderr.toString()]).toEqual([0, null, ''])
    const { ids, stages, exits, control } = JSON.parse(run.stdout)
    expect(exits).toEqual({ downgrade: 0, verify: 0 })

    // Under this umask Node's own defaults stay wide: the modes below are the store's choice.
    expect(control).toEqual([
      { path: 'control-file', type: 'file', mode: '666' },
      { path: 'control-folder', type: 'dir', mode: '777' },
    ])

    // Whatever a path is, it must be a file of 0600 or a folder of 0700.
    const wider = Object.entries(stages).flatMap(([stage, entries]) =>
      entries
        .filter(
          ({ type, mode }) =>
            !(type === 'file' ? mode === '600' : type === 'dir' && mode === '700'),
        )
        .map(({ path: name, type, mode }) => `${stage}: ${type} ${mode} ${name}`),
    )
    expect(wider).toEqual([])

    // And every path is one of the kinds listed here: a new kind of file shows up.
    const names = Object.entries(ids).map(([name, id]) => [id.slice(id.indexOf(':') + 1), name])
    const normalise = ({ path: name, type, mode }) => {
      let text = name.replace(/[0-9a-z]{10}(\.lock|-[0-9a-f]+\.pixstore-image)$/, '<writer>$1')
      for (const [key, label] of names) text = text.replace(key, `<${label}>`)
      return `${mode} ${type} ${text}`
    }
    const listed = Object.fromEntries(
      Object.entries(stages).map(([stage, entries]) => [stage, entries.map(normalise).sort()]),
    )

    const store = (name, db, root, { open, legacy = false }) => {
      const image = (label, folder, seq) =>
        `600 file ${name}/${folder}<${name} ${label}>${legacy ? '' : `.<writer>-${seq}`}.pixstore-image`
      return [
        ...db.map((folder) => `700 dir ${name}/${folder}`),
        `600 file ${name}/${db.at(-1)}/pixstore.sqlite`,
        ...(open
          ? [
              `600 file ${name}/${db.at(-1)}/pixstore.sqlite-shm`,
              `600 file ${name}/${db.at(-1)}/pixstore.sqlite-wal`,
            ]
          : []),
        ...root.map((folder) => `700 dir ${name}/${folder}`),
        `700 dir ${name}/${root.at(-1)}/.pixstore`,
        `700 dir ${name}/${root.at(-1)}/.pixstore/writers`,
        ...(open ? [`600 file ${name}/${root.at(-1)}/.pixstore/writers/<writer>.lock`] : []),
        `700 dir ${name}/${root.at(-1)}/album`,
        image('album', `${root.at(-1)}/album/`, 4),
        image('fromFile', `${root.at(-1)}/album/`, 2),
        image('root', `${root.at(-1)}/`, 3),
        `700 dir ${name}`,
      ].sort()
    }
    const plain = ['plain', ['db', 'db/nested'], ['images']]
    const wrapped = ['wrapped', ['db'], ['images', 'images/nested']]
    expect(listed).toEqual({
      'plain open': store(...plain, { open: true }),
      'plain closed': store(...plain, { open: false }),
      'wrapped open': store(...wrapped, { open: true }),
      'wrapped closed': store(...wrapped, { open: false }),
      'plain after downgrade': store(...plain, { open: false, legacy: true }),
      'wrapped after verify': store(...wrapped, { open: false }),
    })
  })
})

// ---------------------------------------------------------------------------------------------
// The scan

/**
 * Every form a secret can take in text: its raw bytes, base64 and base64url with and without
 * padding, hex in both cases; and two that dumps produce, Node's `<Buffer 0a 1b …>` (spaced hex)
 * and Rust's `[10, 27, …]` (decimals). Each textual form is also looked for by its first 16
 * characters, which a message cutting a value short would still hold.
 */
function forms(bytes) {
  const base64 = bytes.toString('base64')
  const base64url = bytes.toString('base64url')
  const hex = bytes.toString('hex')
  const texts = {
    'base64 padded': base64,
    'base64 unpadded': base64.replace(/=+$/, ''),
    'base64url padded': base64url.padEnd(Math.ceil(base64url.length / 4) * 4, '='),
    'base64url unpadded': base64url,
    'hex lower': hex,
    'hex upper': hex.toUpperCase(),
    'hex spaced': hex.replace(/(..)(?!$)/g, '$1 '),
    decimals: [...bytes].join(', '),
  }
  const all = { raw: bytes.toString('latin1'), ...texts }
  for (const [name, text] of Object.entries(texts)) all[`${name}, first 16`] = text.slice(0, 16)
  return all
}

/** The shortest needle: a 12-byte IV. The scan indexes needles by their first HEAD characters. */
const HEAD = 12

/**
 * Every place in `haystack` (a latin1 string) where a form of a secret occurs, found in one pass:
 * each position is looked up by its next HEAD characters among the needles' heads.
 */
function scanFor(haystack, secrets) {
  const byHead = new Map()
  for (const { label, bytes } of secrets) {
    for (const [form, text] of Object.entries(forms(bytes))) {
      if (text.length < HEAD) throw new Error(`${label} is too short to scan for as ${form}`)
      const head = text.slice(0, HEAD)
      if (!byHead.has(head)) byHead.set(head, [])
      byHead.get(head).push({ label, form, text })
    }
  }
  const found = []
  for (let at = 0; at + HEAD <= haystack.length; at++) {
    const needles = byHead.get(haystack.slice(at, at + HEAD))
    if (needles === undefined) continue
    for (const { label, form, text } of needles) {
      if (haystack.startsWith(text, at)) found.push({ label, form, at })
    }
  }
  return found
}

/** The secrets a database holds, read with the sqlite3 shell: the proof secret, wrapped keys. */
function databaseSecrets(db) {
  const query = (sql) => execFileSync('sqlite3', [db, sql], { encoding: 'utf8' }).split('\n')
  const rows = (sql) => query(sql).filter(Boolean)
  const [proofSecret] = rows("SELECT hex(value) FROM pixstore_meta WHERE name='proof_secret'")
  const wrapped = [
    ...rows("SELECT value FROM pixstore_meta WHERE name LIKE '%wrapped%'"),
    ...rows(
      "SELECT json_extract(meta, '$.wrappedKey') FROM image_records WHERE json_valid(meta) " +
        "AND json_extract(meta, '$.wrappedKey') IS NOT NULL",
    ),
  ]
  return [
    { label: `proof secret of ${db}`, bytes: Buffer.from(proofSecret, 'hex') },
    ...wrapped.map((text) => ({
      label: `wrapped key in ${db}`,
      bytes: Buffer.from(text, 'base64'),
    })),
  ]
}

test('the scanner finds a secret planted in any of its forms', () => {
  const secret = { label: 'planted', bytes: crypto.randomBytes(32) }
  const text = 'PixstoreError: Invalid image file\n    at settle (lib/errors.js:54:11) {\n'
  const planted = Object.entries(forms(secret.bytes)).map(([form, value]) => {
    const at = text.length >> 1
    const found = scanFor(`${text.slice(0, at)}${value}${text.slice(at)}`, [secret])
    return [form, found.some((hit) => hit.form === form && hit.at === at)]
  })
  expect(planted).toEqual(Object.keys(forms(secret.bytes)).map((form) => [form, true]))
  expect(scanFor(text, [secret])).toEqual([])
})

describe('no output of a session full of failures holds a secret', () => {
  let run
  let report

  beforeAll(async () => {
    // No DAC override, so that permissions deny even root (STORAGE_READ_ONLY,
    // FILE_NOT_READABLE); a file size limit of 1 MiB, so that a large image fills the "disk".
    const limit = ['prlimit', `--fsize=${1024 * 1024}`, '--']
    const unprivileged =
      process.getuid() === 0
        ? ['setpriv', '--bounding-set=-dac_override,-dac_read_search,-fowner', '--']
        : []
    run = await runChild('scan', [...limit, ...unprivileged])
    report = JSON.parse(run.report.toString('utf8'))
  }, 30_000)

  test('the session reaches every failure it is meant to, in every mode', () => {
    expect([run.code, run.signal]).toEqual([0, null])
    const { steps } = report

    const thrown = new Set(
      steps
        .filter(({ mode }) => mode === 'throw')
        .map(({ outcome }) => outcome)
        .filter((outcome) => /^[A-Z_]+$|Error$/.test(outcome)),
    )
    expect([...thrown].sort()).toEqual([
      'DATABASE_BUSY',
      'DATABASE_CORRUPT',
      'DATABASE_ERROR',
      'DEFAULT_ENDPOINT_RUNNING',
      'ENDPOINT_UNAVAILABLE',
      'FILE_NOT_READABLE',
      'INCOMPATIBLE_STORE',
      'INTEGRITY_ERROR',
      'INVALID_ARGUMENT',
      'INVALID_CONFIG',
      'INVALID_ID',
      'INVALID_IMAGE',
      'MASTER_KEY_REQUIRED',
      'NOT_FOUND',
      'NOT_INITIALIZED',
      'STORAGE_ERROR',
      'STORAGE_FULL',
      'STORAGE_READ_ONLY',
      'TypeError',
      'WRONG_MASTER_KEY',
    ])
    // The wire answers to bad proofs and requests: MissingID, MissingProof, InvalidProof,
    // InternalError; and the HTTP statuses of malformed requests.
    const answers = new Set(
      steps.map(({ outcome }) => outcome).filter((o) => /^(wire|HTTP)/.test(o)),
    )
    expect([...answers].sort()).toEqual([
      'HTTP 200 wire 4',
      'HTTP 200 wire 5',
      'HTTP 200 wire 6',
      'HTTP 204',
      'HTTP 400',
      'HTTP 404',
      'HTTP 414',
      'HTTP 431',
      'wire 3',
      'wire 4',
      'wire 5',
      'wire 6',
    ])
    // The command line failed every time, with these codes among them.
    const cli = steps.filter(({ mode }) => mode === 'cli')
    expect(cli.filter(({ outcome }) => outcome === 'exit 0')).toEqual([])
    const printed = report.texts
      .filter(({ source }) => / pixstore /.test(source))
      .flatMap(({ text }) => [...text.matchAll(/^pixstore: ([A-Z_]+): /gm)].map((m) => m[1]))
    expect([...new Set(printed)].sort()).toEqual([
      'DATABASE_CORRUPT',
      'INCOMPATIBLE_STORE',
      'INVALID_CONFIG',
      'MASTER_KEY_REQUIRED',
      'STORE_IN_USE',
      'WRONG_MASTER_KEY',
    ])
    // Every code there is was reached.
    const reached = new Set([...thrown, ...printed])
    expect(ERROR_CODES.filter((code) => !reached.has(code))).toEqual([])

    // The calls that fail in throw mode fail the same way in warn mode (absorbed, printed) and
    // in hybrid mode (absorbed and remembered, a TypeError thrown), with both stores.
    for (const store of ['wrapped', 'plain']) {
      const inMode = (name) =>
        steps.filter((step) => step.store === store && step.mode === name).map((step) => step.step)
      const outcomes = (name) =>
        Object.fromEntries(
          steps
            .filter((step) => step.store === store && step.mode === name)
            .map(({ step, outcome }) => [step, outcome]),
        )
      const [threw, warned, hybrid] = ['throw', 'warn', 'hybrid'].map(outcomes)
      expect(inMode('warn')).toEqual(inMode('hybrid'))
      expect(inMode('warn').length).toBeGreaterThanOrEqual(45)
      for (const step of inMode('warn')) {
        const code = threw[step]
        const expected =
          code === 'ok'
            ? ['ok', 'ok']
            : code === 'TypeError'
              ? ['absorbed', 'TypeError']
              : ['absorbed', `absorbed ${code}`]
        expect([step, warned[step], hybrid[step]]).toEqual([step, ...expected])
      }
    }
  })

  test('stdout is empty and stderr holds the mode warnings and nothing else', () => {
    expect(run.stdout.toString()).toBe('')
    const stderr = run.stderr.toString('utf8')
    const absorbed = report.steps.filter(({ outcome }) => outcome.startsWith('absorbed'))
    const viaHandler = absorbed.filter(({ mode }) => mode === 'custom')
    const warnings = stderr.match(/^(PixstoreError|TypeError): /gm) ?? []
    expect(warnings).toHaveLength(absorbed.length - viaHandler.length)
    expect(warnings.length).toBeGreaterThanOrEqual(100)
    const otherLines = stderr
      .split('\n')
      .filter((line) => !/^((PixstoreError|TypeError): |    at |  (code|detail): |}$|$)/.test(line))
    expect(otherLines).toEqual([])
  })

  /** Every secret of the session: the child's, and what the databases hold at the end. */
  function allSecrets() {
    const fromDatabases = report.databases.flatMap(databaseSecrets)
    const secrets = [
      ...report.secrets.map(({ label, base64 }) => ({
        label,
        bytes: Buffer.from(base64, 'base64'),
      })),
      ...fromDatabases,
    ]
    const distinct = new Map(secrets.map((s) => [s.bytes.toString('hex'), s]))
    return { secrets: [...distinct.values()], fromDatabases }
  }

  /**
   * Scans named texts (latin1 strings) for the secrets; each hit comes with its context. Text
   * is scanned as the bytes a log would hold (UTF-8) and code unit by code unit (latin1), where
   * raw bytes carried in a string would show.
   */
  function scanTexts(named, secrets) {
    const haystacks = named.flatMap(([name, text, binary]) =>
      binary
        ? [[name, text]]
        : [
            [`${name} (UTF-8)`, Buffer.from(text, 'utf8').toString('latin1')],
            [`${name} (latin1)`, text],
          ],
    )
    const found = haystacks.flatMap(([name, haystack]) =>
      scanFor(haystack, secrets).map(({ label, form, at }) => ({
        label,
        form,
        in: name,
        context: haystack.slice(Math.max(0, at - 80), at + 80),
      })),
    )
    const bytes = haystacks.reduce((sum, [, text]) => sum + text.length, 0)
    const needles = secrets.length * Object.keys(forms(secrets[0].bytes)).length
    return { found, needles, bytes }
  }

  const isMisplaced = ({ source }) => source.startsWith('misplaced ')

  test('no secret appears in stdout, stderr, a thrown value, an answer or the command line', () => {
    const { secrets, fromDatabases } = allSecrets()
    const collected = report.texts.filter((text) => !isMisplaced(text))
    const texts = [...new Set(collected.map(({ text }) => text))]
    const { found, needles, bytes } = scanTexts(
      [
        ['stdout', run.stdout.toString('latin1'), true],
        ['stderr', run.stderr.toString('latin1'), true],
        ['collected texts', texts.join('\n')],
      ],
      secrets,
    )

    const count = (pattern) => secrets.filter((s) => pattern.test(s.label)).length
    console.log(
      `Scanned stdout (${run.stdout.length} bytes), stderr (${run.stderr.length} bytes) and ` +
        `${collected.length} collected texts (${texts.length} distinct) of ${report.steps.length} ` +
        `steps: ${bytes} bytes in all (texts twice, as UTF-8 and latin1), for ` +
        `${secrets.length} distinct secrets in ${needles} forms: ${count(/^key of/)} image ` +
        `keys, ${count(/^iv of/)} IVs, ${count(/^tag of/)} tags, ${count(/^proof of /)} proofs, ` +
        `${count(/^master key/)} master keys (good and bad), ${count(/proof secret/)} proof ` +
        `secrets, ${count(/wrapped/)} wrapped keys; ${found.length} found.`,
    )
    expect(count(/^key of/)).toBeGreaterThanOrEqual(40)
    expect(count(/^proof of /)).toBeGreaterThanOrEqual(40)
    expect(count(/wrapped/)).toBeGreaterThanOrEqual(10)
    expect(fromDatabases.length).toBeGreaterThanOrEqual(10)
    expect(found).toEqual([])
  })

  // An error names the value it refuses (the README's rule), so a secret the caller passes where
  // an id, a path or an argument belongs is quoted back to that caller, in that call's own error
  // and nowhere else. Pinned here, exactly, so that any other echo fails the test.
  test('a secret passed where another value belongs is quoted back only in its own error', () => {
    const { secrets } = allSecrets()
    const texts = report.texts.filter(isMisplaced)
    expect(report.steps.filter(({ store }) => store === 'misplaced')).toHaveLength(8)
    const { found } = scanTexts(
      texts.map(({ source, text }) => [source, text]),
      secrets,
    )
    // One line per call that quoted a secret: the secret's kind and the whole forms found.
    const quoted = {}
    for (const hit of found) {
      if (hit.form.includes('first 16')) continue
      const step = hit.in.replace(
        /( \((message|stack|string|inspect|json|detail|code)\))? \((UTF-8|latin1)\)$/,
        '',
      )
      quoted[step] ??= new Set()
      // The forms vary with the secret's bytes (base64 and base64url agree without + or /).
      quoted[step].add(hit.label.replace(/ of .*/, ''))
    }
    for (const step of Object.keys(quoted)) quoted[step] = [...quoted[step]].join(', ')
    expect(quoted).toEqual({
      'misplaced pixstore a command named by the key': 'master key (rotated to)',
      'misplaced throw getImageRecord(an image key as the id)': 'key',
      'misplaced throw initPixstoreBackend(a key as the config)': 'master key (rotated to)',
      'misplaced throw readImage(a proof as the id)': 'proof',
      'misplaced throw saveImage(a key as the image)': 'master key (rotated to)',
      'misplaced throw saveImageFromFile(a key as the path)': 'master key (rotated to)',
      'misplaced throw verifyStore(a key as repair)': 'master key (rotated to)',
    })
  })
})
