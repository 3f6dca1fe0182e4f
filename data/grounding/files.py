"""Where a root's Sentences/ and Annotations/ files are: unpacked folders, or
the ``annotations.zip`` that BryanPlummer/flickr30k_entities ships, read in
place (a user's folder is never unpacked into). Images are always files
under ``flickr30k-images/``."""
import os
import zipfile

ZIP = "annotations.zip"


class AnnotationFiles:
    def __init__(self, root, zipped=False):
        self.root, self.zip = root, None
        if zipped:
            path = os.path.join(root, ZIP)
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise ValueError(f"{path}: not a zip file ({e})") from None
            # members by their last two parts ("Sentences/<id>.txt"), whatever folder holds them
            self.members = {"/".join(n.split("/")[-2:]): n for n in self.zip.namelist() if not n.endswith("/")}

    def where(self, sub, name):
        """The file's name in messages."""
        if self.zip is None:
            return os.path.join(self.root, sub, name)
        return f"{os.path.join(self.root, ZIP)}:{self.members.get(f'{sub}/{name}', f'{sub}/{name}')}"

    def read(self, sub, name):
        """(name for messages, contents) of ``sub/name``."""
        where = self.where(sub, name)
        if self.zip is None:
            if not os.path.exists(where):
                raise FileNotFoundError(f"{where}: not found")
            with open(where, "rb") as f:
                return where, f.read()
        member = self.members.get(f"{sub}/{name}")
        if member is None:
            raise FileNotFoundError(f"{where}: not in the zip")
        return where, self.zip.read(member)

    def close(self):
        if self.zip is not None:
            self.zip.close()
