'use strict';
// The compiled addon (node-gyp builds it at install: npm ci / npm install).
module.exports = require('./build/Release/nand_map.node');
