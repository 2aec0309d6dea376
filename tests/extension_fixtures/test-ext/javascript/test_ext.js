window.testExtJs = 'ran';
onUiLoaded(function () { document.body.setAttribute('data-test-ext', 'ui-loaded'); });
