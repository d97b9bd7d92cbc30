//! A file tree with explicit inodes: what OCI layers are applied into and what the EROFS
//! writer packs. Names are raw bytes (no UTF-8 assumption); a hard link is two names of one
//! inode; overwriting one name leaves the other names of its inode alone.
//!
//! Path lookups inside the tree follow symlinks in *parent* components the way container
//! runtimes apply layers (the link resolved inside the tree: `..` stops at the root, an
//! absolute target starts at the root), never in the last component. Pure: no filesystem.

use std::collections::BTreeMap;

/// Index of an inode in [`Tree::inodes`]; the root directory is 0.
pub type Ino = usize;

/// Where a path's last name goes: its parent directory (`None` if a parent is missing) and
/// the name.
type Parent<'p> = (Option<Ino>, &'p [u8]);

/// Symlinks followed while resolving one path, at most (Linux's MAXSYMLINKS is 40).
const MAX_HOPS: usize = 40;

/// Errors resolving or changing the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("{path}: a parent is not a directory")]
    NotADirectory { path: String },
    #[error("{path}: too many levels of symbolic links")]
    Loop { path: String },
    #[error("{path}: no such file (hard link target)")]
    NoTarget { path: String },
    #[error("{path}: hard link to a directory")]
    LinkToDirectory { path: String },
    #[error("{path}: bad path ('..', a NUL byte or an empty name)")]
    BadPath { path: String },
}

/// Ownership and permission bits (`0o7777`) of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub const ROOT_DIR: Meta = Meta {
        perm: 0o755,
        uid: 0,
        gid: 0,
    };
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir(BTreeMap<Vec<u8>, Ino>),
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub meta: Meta,
    pub kind: Kind,
}

/// The tree. Unlinked inodes stay in `inodes` but are unreachable (writers walk from 0).
#[derive(Debug, Clone)]
pub struct Tree {
    pub inodes: Vec<Inode>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            inodes: vec![Inode {
                meta: Meta::ROOT_DIR,
                kind: Kind::Dir(BTreeMap::new()),
            }],
        }
    }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Longest entry path or symlink target taken (Linux's PATH_MAX): a longer one would only
/// make resolution slow.
pub const MAX_PATH: usize = 4096;

/// Split a path of a layer entry into its names: leading `/` and `./` dropped, `.` parts
/// skipped; `..`, NUL, an empty result or more than [`MAX_PATH`] bytes refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    if path.len() > MAX_PATH {
        return Err(TreeError::BadPath {
            path: format!("{}…", show(&path[..64])),
        });
    }
    let mut out = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(TreeError::BadPath { path: show(path) }),
            p if p.contains(&0) => return Err(TreeError::BadPath { path: show(path) }),
            p => out.push(p),
        }
    }
    Ok(out)
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    fn children(&self, dir: Ino) -> Option<&BTreeMap<Vec<u8>, Ino>> {
        match &self.inodes[dir].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: Ino) -> Option<&mut BTreeMap<Vec<u8>, Ino>> {
        match &mut self.inodes[dir].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// The directory `parts` names, following symlinks on the way. `Ok(None)` if a part is
    /// missing; `create` makes missing directories (root-owned, 0755) instead.
    fn resolve_dir(
        &mut self,
        parts: &[&[u8]],
        create: bool,
        path: &[u8],
    ) -> Result<Option<Ino>, TreeError> {
        // A work list of names still to walk, so symlink targets splice in front.
        let mut todo: Vec<Vec<u8>> = parts.iter().rev().map(|p| p.to_vec()).collect();
        let mut stack: Vec<Ino> = vec![0];
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            let cur = *stack.last().expect("root stays");
            match name.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let Some(kids) = self.children(cur) else {
                return Err(TreeError::NotADirectory { path: show(path) });
            };
            let next = match kids.get(&name) {
                Some(&i) => i,
                None if create => {
                    let i = self.push(Inode {
                        meta: Meta::ROOT_DIR,
                        kind: Kind::Dir(BTreeMap::new()),
                    });
                    self.children_mut(cur).expect("dir").insert(name, i);
                    i
                }
                None => return Ok(None),
            };
            match &self.inodes[next].kind {
                Kind::Dir(_) => stack.push(next),
                Kind::Symlink(target) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(TreeError::Loop { path: show(path) });
                    }
                    if target.first() == Some(&b'/') {
                        stack.truncate(1);
                    }
                    for p in target.split(|b| *b == b'/').rev() {
                        todo.push(p.to_vec());
                    }
                }
                Kind::File(_) => return Err(TreeError::NotADirectory { path: show(path) }),
            }
        }
        Ok(Some(*stack.last().expect("root stays")))
    }

    fn push(&mut self, inode: Inode) -> Ino {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    /// The parent directory and last name of `path`; `None` for the root itself.
    fn parent_of<'p>(
        &mut self,
        path: &'p [u8],
        create: bool,
    ) -> Result<Option<Parent<'p>>, TreeError> {
        let parts = components(path)?;
        let Some((last, parents)) = parts.split_last() else {
            return Ok(None);
        };
        Ok(Some((self.resolve_dir(parents, create, path)?, last)))
    }

    /// The inode `path` names (its last component not followed), if any.
    pub fn lookup(&mut self, path: &[u8]) -> Result<Option<Ino>, TreeError> {
        match self.parent_of(path, false)? {
            None => Ok(Some(0)),
            Some((None, _)) => Ok(None),
            Some((Some(dir), name)) => Ok(self.children(dir).and_then(|c| c.get(name).copied())),
        }
    }

    /// Remove the name `path` (whiteout); nothing if it does not exist.
    pub fn remove(&mut self, path: &[u8]) -> Result<(), TreeError> {
        if let Some((Some(dir), name)) = self.parent_of(path, false)? {
            if let Some(kids) = self.children_mut(dir) {
                kids.remove(name);
            }
        }
        Ok(())
    }

    /// Remove every child of the directory `path` (opaque whiteout); nothing if it is not
    /// a directory.
    pub fn clear_dir(&mut self, path: &[u8]) -> Result<(), TreeError> {
        let dir = match self.parent_of(path, false)? {
            None => Some(0),
            Some((None, _)) => None,
            Some((Some(d), name)) => self.children(d).and_then(|c| c.get(name).copied()),
        };
        if let Some(kids) = dir.and_then(|d| self.children_mut(d)) {
            kids.clear();
        }
        Ok(())
    }

    /// Put a directory at `path`: over an existing directory only its metadata changes
    /// (children kept); anything else there is replaced.
    pub fn put_dir(&mut self, path: &[u8], meta: Meta) -> Result<(), TreeError> {
        let Some((dir, name)) = self.parent_of(path, true)? else {
            self.inodes[0].meta = meta;
            return Ok(());
        };
        let dir = dir.expect("created");
        if let Some(&i) = self.children(dir).and_then(|c| c.get(name)) {
            if let Kind::Dir(_) = self.inodes[i].kind {
                self.inodes[i].meta = meta;
                return Ok(());
            }
        }
        let i = self.push(Inode {
            meta,
            kind: Kind::Dir(BTreeMap::new()),
        });
        self.children_mut(dir)
            .expect("dir")
            .insert(name.to_vec(), i);
        Ok(())
    }

    /// Put a file or symlink at `path`, replacing whatever had that name (other names of a
    /// replaced hard-linked inode keep it). A symlink target over [`MAX_PATH`] bytes or with
    /// a NUL is refused.
    pub fn put(&mut self, path: &[u8], inode: Inode) -> Result<(), TreeError> {
        if let Kind::Symlink(t) = &inode.kind {
            if t.len() > MAX_PATH || t.contains(&0) {
                return Err(TreeError::BadPath { path: show(path) });
            }
        }
        let Some((dir, name)) = self.parent_of(path, true)? else {
            return Err(TreeError::BadPath { path: show(path) });
        };
        let dir = dir.expect("created");
        let i = self.push(inode);
        self.children_mut(dir)
            .expect("dir")
            .insert(name.to_vec(), i);
        Ok(())
    }

    /// Make `path` another name of the inode `target` names (a hard link).
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<(), TreeError> {
        let Some(t) = self.lookup(target)? else {
            return Err(TreeError::NoTarget { path: show(target) });
        };
        if let Kind::Dir(_) = self.inodes[t].kind {
            return Err(TreeError::LinkToDirectory { path: show(path) });
        }
        let Some((dir, name)) = self.parent_of(path, true)? else {
            return Err(TreeError::BadPath { path: show(path) });
        };
        let dir = dir.expect("created");
        // Linking a name to the inode it already names changes nothing.
        self.children_mut(dir)
            .expect("dir")
            .insert(name.to_vec(), t);
        Ok(())
    }

    /// Every reachable inode once, in a fixed order (depth first, names sorted), with the
    /// parent of each directory; the root first.
    pub fn walk(&self) -> Vec<(Ino, Ino)> {
        let mut seen = vec![false; self.inodes.len()];
        let mut out = Vec::new();
        let mut stack = vec![(0usize, 0usize)];
        seen[0] = true;
        while let Some((i, parent)) = stack.pop() {
            out.push((i, parent));
            if let Kind::Dir(kids) = &self.inodes[i].kind {
                for &k in kids.values().rev() {
                    if !seen[k] {
                        seen[k] = true;
                        stack.push((k, i));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Inode {
        Inode {
            meta: Meta {
                perm: 0o644,
                uid: 0,
                gid: 0,
            },
            kind: Kind::File(data.to_vec()),
        }
    }

    fn read(t: &mut Tree, p: &str) -> Option<Vec<u8>> {
        let i = t.lookup(p.as_bytes()).unwrap()?;
        match &t.inodes[i].kind {
            Kind::File(d) => Some(d.clone()),
            _ => None,
        }
    }

    #[test]
    fn parents_follow_symlinks_inside_the_tree() {
        let mut t = Tree::new();
        t.put_dir(b"usr/lib", Meta::ROOT_DIR).unwrap();
        t.put(
            b"lib",
            Inode {
                meta: Meta::ROOT_DIR,
                kind: Kind::Symlink(b"usr/lib".to_vec()),
            },
        )
        .unwrap();
        t.put(b"lib/x.so", file(b"x")).unwrap();
        assert_eq!(read(&mut t, "usr/lib/x.so").as_deref(), Some(&b"x"[..]));
        // An escaping link stays at the root.
        t.put(
            b"esc",
            Inode {
                meta: Meta::ROOT_DIR,
                kind: Kind::Symlink(b"../../../usr".to_vec()),
            },
        )
        .unwrap();
        assert_eq!(read(&mut t, "esc/lib/x.so").as_deref(), Some(&b"x"[..]));
        // A loop is refused.
        t.put(
            b"loop",
            Inode {
                meta: Meta::ROOT_DIR,
                kind: Kind::Symlink(b"loop".to_vec()),
            },
        )
        .unwrap();
        assert!(matches!(
            t.put(b"loop/f", file(b"")),
            Err(TreeError::Loop { .. })
        ));
        assert!(matches!(
            t.put(b"a/../b", file(b"")),
            Err(TreeError::BadPath { .. })
        ));
        assert!(matches!(
            t.put(b"a/b\0c", file(b"")),
            Err(TreeError::BadPath { .. })
        ));
    }

    #[test]
    fn overwriting_one_link_keeps_the_other() {
        let mut t = Tree::new();
        t.put(b"a", file(b"1")).unwrap();
        t.link(b"b", b"a").unwrap();
        t.put(b"a", file(b"2")).unwrap();
        assert_eq!(read(&mut t, "a").as_deref(), Some(&b"2"[..]));
        assert_eq!(read(&mut t, "b").as_deref(), Some(&b"1"[..]));
        assert!(t.link(b"c", b"missing").is_err());
    }

    #[test]
    fn dir_over_dir_keeps_children() {
        let mut t = Tree::new();
        t.put(b"d/f", file(b"1")).unwrap();
        let m = Meta {
            perm: 0o700,
            uid: 5,
            gid: 6,
        };
        t.put_dir(b"d", m).unwrap();
        assert_eq!(read(&mut t, "d/f").as_deref(), Some(&b"1"[..]));
        let d = t.lookup(b"d").unwrap().unwrap();
        assert_eq!(t.inodes[d].meta, m);
        t.clear_dir(b"d").unwrap();
        assert_eq!(read(&mut t, "d/f"), None);
    }
}
