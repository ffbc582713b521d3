(function(){
  var d=document.getElementById('f-dataset'), w=document.getElementById('f-wrong'),
      g=document.getElementById('f-disagree'), s=document.getElementById('f-split'),
      hl=document.getElementById('f-hl'), shown=document.getElementById('shown'),
      cols=document.querySelectorAll('.f-col'), items=document.querySelectorAll('.item');
  function each(list,fn){for(var i=0;i<list.length;i++)fn(list[i]);}
  function visible(){var v={};each(cols,function(c){if(c.checked)v[c.value]=1;});return v;}
  function highlight(item,method){
    var ctxs=item.querySelectorAll('.ctx'), hit=null;
    each(ctxs,function(c){if(JSON.parse(c.getAttribute('data-methods')).indexOf(method)>=0)hit=c;});
    if(!hit)return;
    var same=JSON.parse(hit.getAttribute('data-methods'));  // methods that quote the very same spans
    each(ctxs,function(c){c.hidden=c!==hit;});
    each(item.querySelectorAll('.tab'),function(t){
      t.setAttribute('aria-pressed',same.indexOf(t.getAttribute('data-method'))>=0?'true':'false');});
  }
  function apply(){
    var v=visible(), n=0;
    each(document.querySelectorAll('.col,.tab'),function(c){c.style.display=v[c.getAttribute('data-method')]?'':'none';});
    each(items,function(item){
      var ok=!d.value||item.getAttribute('data-dataset')===d.value, f1s=[], norms={}, nn=0;
      each(item.querySelectorAll('.col[data-f1]'),function(c){
        if(!v[c.getAttribute('data-method')])return;
        f1s.push(parseFloat(c.getAttribute('data-f1')));
        var a=c.getAttribute('data-norm'); if(!(a in norms)){norms[a]=1;nn++;}
      });
      if(w.checked)ok=ok&&f1s.some(function(x){return x<1;});
      if(g.checked)ok=ok&&nn>1;
      if(s.checked)ok=ok&&f1s.length>1&&Math.max.apply(null,f1s)-Math.min.apply(null,f1s)>1e-9;
      item.style.display=ok?'':'none'; if(ok)n++;
      var act=item.querySelector('.tab[aria-pressed="true"]');
      if(act&&!v[act.getAttribute('data-method')]){
        var first=null; each(item.querySelectorAll('.tab'),function(t){
          if(!first&&v[t.getAttribute('data-method')])first=t;});
        if(first)highlight(item,first.getAttribute('data-method'));
      }
    });
    shown.textContent=String(n);
  }
  function applyHighlight(){
    each(items,function(item){highlight(item,hl.value||item.getAttribute('data-default'));});
  }
  function fromHash(){
    (location.hash||'').replace(/^#/,'').split('&').forEach(function(kv){
      var i=kv.indexOf('='); if(i<0)return;
      var k=decodeURIComponent(kv.slice(0,i)), val=decodeURIComponent(kv.slice(i+1));
      if(k==='dataset')d.value=val;
      if(k==='method'||k==='methods'){
        var want=val.split(','); each(cols,function(c){c.checked=!val||want.indexOf(c.value)>=0;});
      }
      if(k==='wrong')w.checked=val==='1'; if(k==='disagree')g.checked=val==='1'; if(k==='split')s.checked=val==='1';
      if(k==='hl'){hl.value=val; applyHighlight();}
    });
  }
  document.addEventListener('click',function(ev){
    var t=ev.target.closest?ev.target.closest('.tab'):null;
    if(t)highlight(t.closest('.item'),t.getAttribute('data-method'));
  });
  each([d,w,g,s],function(el){el.addEventListener('change',apply);});
  each(cols,function(el){el.addEventListener('change',apply);});
  hl.addEventListener('change',function(){applyHighlight();apply();});
  window.addEventListener('hashchange',function(){fromHash();apply();});
  fromHash(); apply();
})();
