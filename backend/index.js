'use strict'

module.exports = require('../lib/backend.js')
