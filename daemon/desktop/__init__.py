"""The desktop's own search bars: GNOME Shell's and KRunner's providers over the session bus.

``answers`` asks the running daemon and makes what it says safe to show;
``thumbs`` keeps the shared freedesktop thumbnails; ``launch`` opens a file
or the web page; ``bus`` speaks the two D-Bus interfaces; ``files`` installs
the activation files the shells read.
"""
