// A minimal CommonJS loader for the browser test (tests/webrtc_browser.rs): JsSIP's npm package ships CommonJS
// sources only, so the test serves them as one script, `installRequire({path: factory, ...})`, each factory a
// module's source wrapped in `function (require, module, exports)`, paths as in node_modules ("jssip/lib/UA.js").
// Resolution follows node's for what these packages use: relative paths with or without ".js" or "/index.js",
// JSON files, and bare package names through the package.json `browser` (string form) or `main` field.
function installRequire(factories) {
  var cache = {};

  function normalize(path) {
    var out = [];
    path.split('/').forEach(function (seg) {
      if (seg === '' || seg === '.') return;
      if (seg === '..') out.pop();
      else out.push(seg);
    });
    return out.join('/');
  }

  function resolve(path) {
    var candidates = [path, path + '.js', path + '.json', path + '/index.js'];
    for (var i = 0; i < candidates.length; i++) {
      if (factories[candidates[i]]) return candidates[i];
    }
    var pkg = path + '/package.json';
    if (factories[pkg]) {
      var meta = load(pkg);
      var main = typeof meta.browser === 'string' ? meta.browser : meta.main || 'index.js';
      return resolve(normalize(path + '/' + main));
    }
    throw new Error('cannot resolve ' + path);
  }

  function load(id) {
    if (cache[id]) return cache[id].exports;
    var module = { exports: {} };
    cache[id] = module;
    var dir = id.slice(0, id.lastIndexOf('/'));
    factories[id].call(module.exports, function (spec) {
      var rel = spec.charAt(0) === '.';
      return load(resolve(normalize(rel ? dir + '/' + spec : spec)));
    }, module, module.exports);
    return module.exports;
  }

  return function (name) {
    return load(resolve(name));
  };
}
